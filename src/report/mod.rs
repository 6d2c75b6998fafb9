//! Pictures and pages for people: SVG charts ([`svg`]) that the CLI writes beside its JSON,
//! and the self-contained HTML report ([`html`]) of `unlearn report`.

pub mod html;
pub mod svg;
