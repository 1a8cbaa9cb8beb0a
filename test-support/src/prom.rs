//! Lookups in the Prometheus text format, as `/metrics` serves it.

/// Whether `text` has `line` as one of its lines.
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The sum of the samples of the metric `name` that carry all of `labels`
/// (0 when there is none). Comments are skipped; a sample's other labels
/// do not matter.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let have = rest.strip_suffix('}')?;
            let ok = n == name
                && labels
                    .iter()
                    .all(|(k, v)| have.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The value of the sample whose series (name and labels, exactly as
/// written) is `series`, if there is one.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    const TEXT: &str = "# HELP x demo\n\
        x_total{direction=\"inbound\",protocol=\"http\"} 2\n\
        x_total{direction=\"outbound\",protocol=\"http\"} 3\n\
        x_total{direction=\"outbound\",protocol=\"tcp\"} 4\n\
        y 1.5\n";

    #[test]
    fn sums_by_labels() {
        assert_eq!(super::sum(TEXT, "x_total", &[]), 9.0);
        assert_eq!(
            super::sum(TEXT, "x_total", &[("direction", "outbound")]),
            7.0
        );
        assert_eq!(super::sum(TEXT, "x_total", &[("protocol", "grpc")]), 0.0);
        assert_eq!(super::sum(TEXT, "y", &[]), 1.5);
        assert_eq!(super::value(TEXT, "y"), Some(1.5));
        assert!(super::has_line(TEXT, "y 1.5"));
    }
}
