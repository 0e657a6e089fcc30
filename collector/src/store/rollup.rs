//! Rollups (placeholder, filled in step 3).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Minute,
    Hour,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollup;
