//! Pictures and pages for people: SVG charts ([`svg`]) that the CLI writes beside its JSON.

pub mod svg;
