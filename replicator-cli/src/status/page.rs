//! `GET /`: the status page for people. One self-contained HTML file (inline
//! CSS and JavaScript, nothing from a CDN: clusters are often offline) that
//! polls `/api/status` every second and draws the progress, an events/s
//! chart of the last minutes, positions, component health and the
//! configuration.

/// The page, as served.
pub(crate) const HTML: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::HTML;

    #[test]
    fn the_page_is_self_contained_and_polls_the_api() {
        assert!(HTML.contains("/api/status"));
        for outside in ["http://", "https://", "//cdn", "<link "] {
            assert!(!HTML.contains(outside), "the page loads {outside}");
        }
    }
}
