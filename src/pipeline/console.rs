//! What the console shows, computed without I/O: how long something has waited in words, a
//! timestamp for people, and the dashboard's charts as SVG. The charts are drawn here, on the
//! server, so the console needs no script; every text in them is escaped.

use std::fmt::Write;

const WEEK: i64 = 7 * 24 * 3600;

/// A block case's life, as the charts need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpan {
    pub opened_at: i64,
    pub closed_at: Option<i64>,
    pub ips: u32,
}

/// The week-by-week numbers the dashboard draws.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weekly {
    /// (week start, cases opened, cases closed)
    pub cases: Vec<(i64, u32, u32)>,
    /// Days from a block to its delisting, for the cases closed in the window.
    pub days_to_delisting: Vec<f64>,
    /// (week start, IPs of cases open at the end of that week, or now for this week)
    pub blocked_ips: Vec<(i64, u32)>,
}

/// The first second of the oldest of the last `weeks` weeks up to `now`.
pub fn weeks_start(now: i64, weeks: i64) -> i64 {
    (now / WEEK - weeks + 1) * WEEK
}

/// The last `weeks` weeks up to `now`, from the block cases open in that time.
pub fn weekly(spans: &[BlockSpan], now: i64, weeks: i64) -> Weekly {
    let start = weeks_start(now, weeks);
    let index = |t: i64| {
        usize::try_from((t - start) / WEEK)
            .ok()
            .filter(|&i| i < weeks as usize)
    };
    let mut out = Weekly {
        cases: (0..weeks).map(|i| (start + i * WEEK, 0, 0)).collect(),
        days_to_delisting: Vec::new(),
        blocked_ips: (0..weeks).map(|i| (start + i * WEEK, 0)).collect(),
    };
    for span in spans {
        if let Some(i) = (span.opened_at >= start)
            .then(|| index(span.opened_at))
            .flatten()
        {
            out.cases[i].1 += 1;
        }
        if let Some(closed) = span.closed_at.filter(|c| *c >= start) {
            if let Some(i) = index(closed) {
                out.cases[i].2 += 1;
            }
            out.days_to_delisting
                .push((closed - span.opened_at) as f64 / 86_400.0);
        }
        for (week, ips) in out.blocked_ips.iter_mut() {
            let end = (*week + WEEK).min(now);
            if span.opened_at < end && span.closed_at.is_none_or(|c| c >= end) {
                *ips += span.ips;
            }
        }
    }
    out
}

/// A span of seconds as a person reads it: `45 s`, `12 min`, `5 h 20 min`, `3 d 4 h`.
pub fn duration_words(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A Unix time as `2026-12-01 14:05 UTC`.
pub fn timestamp(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

/// Header fields and text bytes of a message kept for the console.
const EXCERPT_HEADERS: usize = 4 * 1024;
const EXCERPT_TEXT: usize = 8 * 1024;

/// What the console shows of a handled message: its header fields (unfolded, each on a line)
/// and its text, both cut short. Shown escaped, never as HTML: the text is the parser's plain
/// text, even of an HTML-only message.
pub fn excerpt(headers: &[(String, String)], text: &str) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        let line = format!(
            "{name}: {}\n",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        if out.len() + line.len() > EXCERPT_HEADERS {
            out.push_str("[more header fields not kept]\n");
            break;
        }
        out.push_str(&line);
    }
    out.push('\n');
    out.push_str(cut(text, EXCERPT_TEXT));
    if text.len() > EXCERPT_TEXT {
        out.push_str("\n[the rest of the text is not kept]");
    }
    out
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A week's start as `12-01`.
fn week_label(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%m-%d").to_string())
        .unwrap_or_default()
}

/// Text for an SVG document.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 34.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 22.0;

/// One bar series of a chart: its name and colour, a value per week.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub values: Vec<f64>,
}

/// A grouped bar chart, one group per week, with a legend and a y axis from 0.
pub fn bar_chart(title: &str, weeks: &[i64], series: &[Series<'_>]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let top = nice_ceiling(max);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let group = plot_w / weeks.len().max(1) as f64;
    let bar = (group * 0.8) / series.len().max(1) as f64;
    let mut svg = open_svg(title);
    axes(&mut svg, top, plot_h);
    for (w, week) in weeks.iter().enumerate() {
        let x0 = LEFT + group * w as f64 + group * 0.1;
        for (i, s) in series.iter().enumerate() {
            let v = s.values.get(w).copied().unwrap_or(0.0);
            let h = v / top * plot_h;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                x0 + bar * i as f64,
                TOP + plot_h - h,
                (bar - 1.0).max(1.0),
                h,
                esc(s.colour),
                esc(s.name),
                esc(&week_label(*week)),
                v
            );
        }
        if weeks.len() <= 13 || w % 2 == 0 {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
                x0 + group * 0.4,
                HEIGHT - 8.0,
                esc(&week_label(*week))
            );
        }
    }
    legend(&mut svg, series.iter().map(|s| (s.name, s.colour)));
    svg.push_str("</svg>");
    svg
}

/// A line of one value per week (blocked IPs over time).
pub fn line_chart(title: &str, weeks: &[i64], name: &str, colour: &str, values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let top = nice_ceiling(max);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = plot_w / (weeks.len().max(2) - 1) as f64;
    let mut svg = open_svg(title);
    axes(&mut svg, top, plot_h);
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                LEFT + step * i as f64,
                TOP + plot_h - v / top * plot_h
            )
        })
        .collect();
    let _ = write!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
        points.join(" "),
        esc(colour)
    );
    for (i, week) in weeks.iter().enumerate() {
        if weeks.len() <= 13 || i % 2 == 0 {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
                LEFT + step * i as f64,
                HEIGHT - 8.0,
                esc(&week_label(*week))
            );
        }
    }
    legend(&mut svg, [(name, colour)]);
    svg.push_str("</svg>");
    svg
}

/// A histogram of days from a block to its delisting, in buckets of a day up to two weeks.
pub fn days_histogram(title: &str, days: &[f64]) -> String {
    const BUCKETS: usize = 15;
    let mut counts = [0.0_f64; BUCKETS];
    for d in days {
        let i = (d.max(0.0).floor() as usize).min(BUCKETS - 1);
        counts[i] += 1.0;
    }
    let top = nice_ceiling(counts.iter().copied().fold(1.0, f64::max));
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar = plot_w / BUCKETS as f64;
    let mut svg = open_svg(title);
    axes(&mut svg, top, plot_h);
    for (i, c) in counts.iter().enumerate() {
        let h = c / top * plot_h;
        let label = if i == BUCKETS - 1 {
            format!("{i}+")
        } else {
            i.to_string()
        };
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7bb7"><title>{label} days: {c}</title></rect><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{label}</text>"##,
            LEFT + bar * i as f64 + 1.0,
            TOP + plot_h - h,
            bar - 2.0,
            h,
            LEFT + bar * i as f64 + bar / 2.0,
            HEIGHT - 8.0,
        );
    }
    let median = median(days);
    legend(
        &mut svg,
        [(
            format!(
                "days to delisting ({} cases{})",
                days.len(),
                median.map_or(String::new(), |m| format!(", median {m:.1}"))
            )
            .as_str(),
            "#4a7bb7",
        )],
    );
    svg.push_str("</svg>");
    svg
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// 1, 2, 5, 10, 20, 50... at or above `max`.
fn nice_ceiling(max: f64) -> f64 {
    let mut step = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if step * m >= max {
                return step * m;
            }
        }
        step *= 10.0;
    }
}

/// An SVG document's start, with its title for screen readers and tooltips.
fn open_svg(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}"><title>{}</title>"#,
        esc(title),
        esc(title)
    )
}

fn axes(svg: &mut String, top: f64, plot_h: f64) {
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#999"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">0</text>"##,
        TOP + plot_h,
        TOP + plot_h,
        WIDTH - 8.0,
        TOP + plot_h,
        LEFT - 4.0,
        TOP + 8.0,
        top,
        LEFT - 4.0,
        TOP + plot_h,
    );
}

fn legend<'a>(svg: &mut String, items: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut x = LEFT;
    for (name, colour) in items {
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="4" width="10" height="10" fill="{}"/><text x="{:.1}" y="13" font-size="11" fill="#222">{}</text>"##,
            esc(colour),
            x + 14.0,
            esc(name)
        );
        x += 24.0 + 6.5 * name.len() as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(duration_words(-5), "0 s");
        assert_eq!(duration_words(45), "45 s");
        assert_eq!(duration_words(12 * 60 + 5), "12 min");
        assert_eq!(duration_words(5 * 3600), "5 h");
        assert_eq!(duration_words(5 * 3600 + 20 * 60), "5 h 20 min");
        assert_eq!(duration_words(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
        assert_eq!(duration_words(2 * 86_400 + 30), "2 d");
        assert_eq!(timestamp(0), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn weeks_count_opened_closed_and_blocked_ips() {
        let now = 100 * WEEK + 3 * 86_400;
        let spans = [
            // Opened two weeks ago, closed last week after 3 days.
            BlockSpan {
                opened_at: 98 * WEEK + 86_400,
                closed_at: Some(98 * WEEK + 4 * 86_400),
                ips: 2,
            },
            // Opened before the window, still open.
            BlockSpan {
                opened_at: 80 * WEEK,
                closed_at: None,
                ips: 5,
            },
            // Opened this week.
            BlockSpan {
                opened_at: 100 * WEEK + 86_400,
                closed_at: None,
                ips: 1,
            },
        ];
        let w = weekly(&spans, now, 4);
        assert_eq!(w.cases.len(), 4);
        assert_eq!(w.cases[0].0, 97 * WEEK);
        assert_eq!(
            w.cases.iter().map(|c| c.1).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(
            w.cases.iter().map(|c| c.2).collect::<Vec<_>>(),
            [0, 1, 0, 0]
        );
        assert_eq!(w.days_to_delisting, vec![3.0]);
        assert_eq!(
            w.blocked_ips.iter().map(|b| b.1).collect::<Vec<_>>(),
            [5, 5, 5, 6],
            "the closed case was closed by the end of its week"
        );
    }

    #[test]
    fn an_excerpt_keeps_header_fields_and_text_within_bounds() {
        let headers = vec![
            ("Subject".to_string(), "Blocked\r\n  again".to_string()),
            ("From".to_string(), "x@example.org".to_string()),
        ];
        let e = excerpt(&headers, "body text");
        assert_eq!(
            e,
            "Subject: Blocked again\nFrom: x@example.org\n\nbody text"
        );
        let long = "\u{e9}".repeat(EXCERPT_TEXT);
        let e = excerpt(&[], &long);
        assert!(e.len() < EXCERPT_TEXT + 64 && e.ends_with("not kept]"));
        let many: Vec<(String, String)> = (0..500)
            .map(|i| (format!("X-H{i}"), "v".repeat(40)))
            .collect();
        assert!(excerpt(&many, "").contains("[more header fields not kept]"));
    }

    #[test]
    fn charts_are_svg_with_escaped_text_and_bounded_bars() {
        let weeks: Vec<i64> = (0..4).map(|w| 1_764_547_200 + w * 604_800).collect();
        let svg = bar_chart(
            "cases <per> week",
            &weeks,
            &[
                Series {
                    name: "opened",
                    colour: "#c0392b",
                    values: vec![1.0, 3.0, 0.0, 7.0],
                },
                Series {
                    name: "closed",
                    colour: "#27ae60",
                    values: vec![0.0, 1.0, 2.0, 1.0],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("cases &lt;per&gt; week") && !svg.contains("<per>"));
        assert_eq!(svg.matches("<rect").count(), 8 + 2, "bars and legend");
        // The tallest bar fills the plot up to the axis' nice ceiling (10 for 7).
        assert!(svg.contains(">10</text>"), "{svg}");
        let line = line_chart(
            "ips",
            &weeks,
            "blocked IPs",
            "#8e44ad",
            &[2.0, 2.0, 5.0, 1.0],
        );
        assert!(line.contains("<polyline"));
        let hist = days_histogram("days", &[0.5, 1.0, 2.0, 30.0]);
        assert!(hist.contains("median 1.5"), "{hist}");
        assert!(hist.contains("14+"));
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
        assert!(bar_chart("empty", &[], &[]).ends_with("</svg>"));
    }
}
