//! The dashboard at `/`, by concern: [`assets`] (the page, its assets and
//! headers, the stream's `?access_token=` for EventSource), [`fleet`] (the
//! demo fleet the browser test seeds), [`rollout`] (the staged rollout it
//! follows in the Rollouts panel), [`browser`] (the page itself in a real
//! headless Chromium, driven over WebDriver by `muster_testkit::webdriver`;
//! screenshots at a desktop and a tablet width go to
//! `target/ci-artifacts/`) and [`action`] (`/api/v1/me`, and in the
//! browser a runbook's suggested action run by an operator, while
//! a viewer gets no button).

#[path = "dashboard/action.rs"]
mod action;
#[path = "dashboard/assets.rs"]
mod assets;
#[path = "dashboard/browser.rs"]
mod browser;
#[path = "dashboard/fleet.rs"]
mod fleet;
#[path = "dashboard/rollout.rs"]
mod rollout;
