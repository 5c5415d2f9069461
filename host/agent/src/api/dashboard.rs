//! The web dashboard at `/`: one page and its script, built into the
//! binary, with the map's land outline inlined (no tile server, CDN or
//! font: it works offline). The page carries no data; its script reads the
//! API like any client (with the bearer token on TCP, given once as
//! `/#token=…`), so serving it needs no token, and a strict
//! Content-Security-Policy keeps it from loading anything but this agent.

use axum::http::header;
use axum::response::IntoResponse;
use std::sync::OnceLock;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
/// Natural Earth 1:110m land, equirectangular (see the file's comment).
const LAND: &str = include_str!("../../assets/land.svg");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

/// Paths served without the token: the page and its script, no data.
pub const PUBLIC: [&str; 2] = ["/", "/dashboard.js"];

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    static BUILT: OnceLock<String> = OnceLock::new();
    let html = BUILT.get_or_init(|| PAGE.replace("{{LAND}}", land_path()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html.as_str(),
    )
}

/// `GET /dashboard.js`.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

/// The `d` of the land outline's one path.
fn land_path() -> &'static str {
    let after = LAND.split_once(" d=\"").map_or("", |(_, rest)| rest);
    after.split_once('"').map_or("", |(d, _)| d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_land_outline_is_inlined_and_nothing_external_is_named() {
        let d = super::land_path();
        assert!(d.len() > 10_000 && d.starts_with('M'), "{}", &d[..d.len().min(40)]);
        let page = super::PAGE.replace("{{LAND}}", d);
        for text in [page.as_str(), super::SCRIPT] {
            let external = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!external.contains("http://") && !external.contains("https://"), "no external resource");
        }
    }
}
