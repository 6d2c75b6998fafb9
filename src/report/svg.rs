//! Self-contained SVG charts (no scripts, no fonts to fetch): heat maps, bar charts and line
//! charts.

use std::fmt::Write;

/// Escape text for SVG/HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// White → dark blue.
fn color(v: f64, lo: f64, hi: f64) -> String {
    let x = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = (255.0 - 227.0 * x, 255.0 - 190.0 * x, 255.0 - 100.0 * x);
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// Heat map of `values[row][col]` with row labels (left) and column labels (bottom, rotated).
pub fn heatmap(
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
    value_name: &str,
) -> String {
    let (cw, ch, left, top, bottom) = (34.0, 18.0, 90.0, 40.0, 110.0);
    let (nr, nc) = (values.len(), col_labels.len());
    let (w, h) = (left + cw * nc as f64 + 120.0, top + ch * nr as f64 + bottom);
    let flat: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let lo = flat.iter().cloned().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = flat.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    for (r, row) in values.iter().enumerate() {
        let y = top + ch * r as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + ch * 0.75,
            esc(row_labels.get(r).map_or("", |x| x))
        );
        for (c, &v) in row.iter().enumerate() {
            let x = left + cw * c as f64;
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{}"><title>{} / {}: {v:.4}</title></rect>"#,
                color(v, lo, hi),
                esc(row_labels.get(r).map_or("", |x| x)),
                esc(col_labels.get(c).map_or("", |x| x))
            );
        }
    }
    for (c, lab) in col_labels.iter().enumerate() {
        let x = left + cw * c as f64 + cw / 2.0;
        let y = top + ch * nr as f64 + 8.0;
        let _ = write!(
            s,
            r#"<text transform="translate({x},{y}) rotate(60)" text-anchor="start">{}</text>"#,
            esc(lab)
        );
    }
    // Colour scale.
    let sx = left + cw * nc as f64 + 20.0;
    for i in 0..10 {
        let v = hi - (hi - lo) * i as f64 / 9.0;
        let _ = write!(
            s,
            r#"<rect x="{sx}" y="{}" width="14" height="{ch}" fill="{}"/>"#,
            top + ch * i as f64,
            color(v, lo, hi)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}">{hi:.3}</text><text x="{}" y="{}">{lo:.3}</text>"#,
        sx + 18.0,
        top + 12.0,
        sx + 18.0,
        top + ch * 10.0
    );
    let _ = write!(
        s,
        r#"<text x="{sx}" y="{}">{}</text></svg>"#,
        top + ch * 10.0 + 20.0,
        esc(value_name)
    );
    s
}

/// Vertical bar chart of `values` with labels.
pub fn bars(title: &str, labels: &[String], values: &[f64], highlight: &[bool]) -> String {
    let (bw, left, top, ph) = (22.0, 60.0, 40.0, 200.0);
    let w = left + bw * values.len() as f64 + 40.0;
    let hi = values.iter().cloned().fold(0.0f64, f64::max).max(1e-12);
    let lo = values.iter().cloned().fold(0.0f64, f64::min);
    let scale = ph / (hi - lo);
    let zero = top + hi * scale;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="11">"#,
        top + ph + 60.0
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    for (i, &v) in values.iter().enumerate() {
        let x = left + bw * i as f64;
        let (y, hgt) = if v >= 0.0 {
            (zero - v * scale, v * scale)
        } else {
            (zero, -v * scale)
        };
        let fill = if highlight.get(i).copied().unwrap_or(false) {
            "#d62728"
        } else {
            "#1f77b4"
        };
        let _ = write!(
            s,
            r#"<rect x="{}" y="{y}" width="{}" height="{hgt}" fill="{fill}"><title>{}: {v:.4}</title></rect>"#,
            x + 2.0,
            bw - 4.0,
            esc(labels.get(i).map_or("", |x| x))
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x + bw / 2.0,
            top + ph + 16.0,
            esc(labels.get(i).map_or("", |x| x))
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" x2="{}" y1="{zero}" y2="{zero}" stroke="black"/><text x="{}" y="{}" text-anchor="end">{hi:.3}</text></svg>"#,
        left + bw * values.len() as f64,
        left - 4.0,
        top + 10.0
    );
    s
}

/// Bars of shares (0–1) with error bars from `lo[i]` to `hi[i]`, one per label.
pub fn bars_with_errors(
    title: &str,
    labels: &[String],
    mean: &[f64],
    lo: &[f64],
    hi: &[f64],
) -> String {
    let (bw, left, top, ph) = (70.0, 50.0, 40.0, 160.0);
    let w = left + bw * mean.len() as f64 + 20.0;
    let y = |v: f64| top + ph * (1.0 - v.clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="11"><text x="{left}" y="20" font-size="14">{}</text>"#,
        top + ph + 40.0,
        esc(title)
    );
    for (i, &m) in mean.iter().enumerate() {
        let x = left + bw * i as f64;
        let cx = x + bw / 2.0;
        let name = esc(labels.get(i).map_or("", |l| l));
        let _ = write!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#1f77b4"><title>{name}: {m:.3} [{:.3}, {:.3}]</title></rect><line x1="{cx}" x2="{cx}" y1="{}" y2="{}" stroke="black"/><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="black"/><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="black"/><text x="{cx}" y="{}" text-anchor="middle">{name}</text>"##,
            x + 8.0,
            y(m),
            bw - 16.0,
            y(0.0) - y(m),
            lo[i],
            hi[i],
            y(lo[i]),
            y(hi[i]),
            cx - 6.0,
            cx + 6.0,
            y(lo[i]),
            y(lo[i]),
            cx - 6.0,
            cx + 6.0,
            y(hi[i]),
            y(hi[i]),
            top + ph + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="black"/><text x="{}" y="{}" text-anchor="end">1</text><text x="{}" y="{}" text-anchor="end">0</text></svg>"#,
        left + bw * mean.len() as f64,
        y(0.0),
        y(0.0),
        left - 4.0,
        y(1.0) + 4.0,
        left - 4.0,
        y(0.0)
    );
    s
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Line chart of named series of (x, y) points, with a legend; non-finite points are skipped.
pub fn lines(title: &str, x_name: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (left, top, pw, ph) = (60.0, 40.0, 420.0, 200.0);
    let pts = series
        .iter()
        .flat_map(|(_, v)| v.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        left + pw + 170.0,
        top + ph + 40.0
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="gray"/>"#
    );
    for (v, y) in [(y1, top + 4.0), (y0, top + ph)] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{y}" text-anchor="end">{v:.3}</text>"#,
            left - 4.0
        );
    }
    for (v, x) in [(x0, left), (x1, left + pw)] {
        let _ = write!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{v}</text>"#,
            top + ph + 14.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        top + ph + 30.0,
        esc(x_name)
    );
    for (i, (name, v)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let d: Vec<String> = v
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            d.join(" "),
            esc(name)
        );
        let ly = top + 12.0 + 16.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            left + pw + 10.0,
            left + pw + 30.0,
            left + pw + 36.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_and_escaped() {
        let h = heatmap(
            "a<b",
            &["0".into(), "1".into()],
            &["x&y".into(), "z".into()],
            &[vec![0.0, 1.0], vec![0.5, f64::NAN]],
            "p",
        );
        assert!(h.starts_with("<svg") && h.ends_with("</svg>"));
        assert!(h.contains("a&lt;b") && h.contains("x&amp;y"));
        assert_eq!(h.matches("<rect").count(), 4 + 10);
        let b = bars("t", &["a".into(), "b".into()], &[0.2, -0.1], &[true, false]);
        assert!(b.contains("#d62728") && b.ends_with("</svg>"));
        let l = lines(
            "loss",
            "step",
            &[("a<".into(), vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)])],
        );
        assert!(l.ends_with("</svg>") && l.contains("a&lt;"));
        assert_eq!(l.matches("<polyline").count(), 1);
    }
}
