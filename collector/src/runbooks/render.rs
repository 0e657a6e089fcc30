//! A runbook's Markdown as HTML, safe to serve from the collector's origin
//! whoever wrote it: pure, no I/O.
//!
//! CommonMark with tables and strikethrough (pulldown-cmark). A site's
//! runbook is text, not markup: raw HTML (a `<script>` block, an inline
//! `<img onerror=…>`) is shown as escaped text, an HTML block as a code
//! block. A link or image address is kept only if it is `http:`,
//! `https:`, `mailto:` or `tel:`, or has no scheme (a path on this
//! collector, `#anchor`); any other (`javascript:`, `data:`, `vbscript:`,
//! a scheme hidden behind a tab or newline) becomes `#`. Images become
//! links to their address, their alt text the link's text: the pages' CSP
//! would block another origin's image anyway, and a runbook has no images
//! of its own to serve.

use pulldown_cmark::{CodeBlockKind, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

/// Schemes a runbook may link to.
const SCHEMES: &[&str] = &["http:", "https:", "mailto:", "tel:"];

/// Is this link address safe to put in an `href`?
pub fn safe_url(url: &str) -> bool {
    let u = url.trim_matches(|c: char| c == ' ' || c.is_ascii_control());
    if u.chars().any(|c| c.is_ascii_control()) {
        // Browsers drop tabs and newlines inside a URL: `java\tscript:`.
        return false;
    }
    let lower = u.to_ascii_lowercase();
    if SCHEMES.iter().any(|s| lower.starts_with(s)) {
        return true;
    }
    // No scheme: a colon only after the first '/', '?' or '#' (a path,
    // a query or a fragment), or none at all.
    match u.find([':', '/', '?', '#']) {
        Some(i) => u.as_bytes()[i] != b':',
        None => true,
    }
}

fn checked(url: CowStr<'_>) -> CowStr<'_> {
    if safe_url(&url) {
        url
    } else {
        CowStr::Borrowed("#")
    }
}

/// The runbook as an HTML fragment (no `<html>` or `<body>`).
pub fn to_html(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(markdown, options).map(|ev| match ev {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::HtmlBlock) => Event::Start(Tag::CodeBlock(CodeBlockKind::Indented)),
        Event::End(TagEnd::HtmlBlock) => Event::End(TagEnd::CodeBlock),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            dest_url: if link_type == LinkType::Email {
                dest_url
            } else {
                checked(dest_url)
            },
            link_type,
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: checked(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// The text of the first heading, if the runbook starts with one (its
/// title); else `None`.
pub fn title(markdown: &str) -> Option<String> {
    let mut events = Parser::new(markdown);
    match events.next()? {
        Event::Start(Tag::Heading { .. }) => {}
        _ => return None,
    }
    let mut t = String::new();
    for ev in events {
        match ev {
            Event::End(TagEnd::Heading(_)) => break,
            Event::Text(s) | Event::Code(s) | Event::Html(s) | Event::InlineHtml(s) => {
                t.push_str(&s)
            }
            Event::SoftBreak | Event::HardBreak => t.push(' '),
            _ => {}
        }
    }
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// `&`, `<`, `>`, `"` and `'` as entities, for text and attribute values of
/// the pages around a runbook.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders() {
        let html = to_html(
            "# Lost\n\nRead `last_seen_ms`, then **act**.\n\n| field | means |\n|---|---|\n| a | b |\n\n- one\n- two\n",
        );
        assert!(html.contains("<h1>Lost</h1>"), "{html}");
        assert!(html.contains("<code>last_seen_ms</code>"), "{html}");
        assert!(html.contains("<strong>act</strong>"), "{html}");
        assert!(
            html.contains("<table>") && html.contains("<td>a</td>"),
            "{html}"
        );
        assert!(html.contains("<li>one</li>"), "{html}");
    }

    #[test]
    fn raw_html_is_text_and_never_markup() {
        let hostile = "# Hi\n\n<script>alert(1)</script>\n\nInline <img src=x onerror=alert(2)> and <b>bold</b>.\n\n<div onclick=\"x()\">\n\nblock\n\n</div>\n\n<!-- comment -->\n";
        let html = to_html(hostile);
        for bad in ["<script", "<img", "<b>", "<div", "<!--"] {
            assert!(!html.contains(bad), "{bad} survived: {html}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{html}"
        );
        // An HTML block reads as code.
        assert!(html.contains("<pre><code>&lt;script&gt;"), "{html}");
    }

    #[test]
    fn only_safe_links_keep_their_address() {
        let cases = [
            ("https://wiki.example.org/cad", true),
            ("HTTP://wiki.example.org/cad", true),
            ("mailto:desk@example.org", true),
            ("tel:+15555550100", true),
            ("/runbooks/lost.will", true),
            ("#escalate", true),
            ("lost.stale", true),
            ("../x", true),
            ("//cdn.example.org/x", true),
            ("/a:b", true),
            ("javascript:alert(1)", false),
            ("JavaScript:alert(1)", false),
            ("  javascript:alert(1)", false),
            ("java\tscript:alert(1)", false),
            ("java\nscript:alert(1)", false),
            ("data:text/html,<script>alert(1)</script>", false),
            ("vbscript:x", false),
            ("file:///etc/passwd", false),
        ];
        for (url, ok) in cases {
            assert_eq!(safe_url(url), ok, "{url:?}");
        }
        let html = to_html(
            "[a](javascript:alert(1)) [b](https://ok.example/) ![c](javascript:alert(2)) <x@example.org> [d](<java\tscript:alert(3)>)",
        );
        assert!(!html.to_lowercase().contains("javascript"), "{html}");
        assert!(
            html.contains(r#"<a href="https://ok.example/">b</a>"#),
            "{html}"
        );
        assert!(html.contains(r##"<a href="#">a</a>"##), "{html}");
        assert!(
            html.contains(r##"<a href="#">c</a>"##),
            "the image is a link: {html}"
        );
        assert!(html.contains(r#"href="mailto:x@example.org""#), "{html}");
        assert!(!html.contains("<img"), "{html}");
    }

    #[test]
    fn titles_and_escaping() {
        assert_eq!(
            title("# Lost: the `will`\n\ntext").as_deref(),
            Some("Lost: the will")
        );
        assert_eq!(title("text first\n\n# Later"), None);
        assert_eq!(title(""), None);
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
