//! Suggesting the name a user likely meant: a key of the plan format, a step's name.

/// The known key closest to `unknown`, if any is close enough to be a likely typo.
pub(crate) fn closest<'k>(
    unknown: &str,
    known: impl IntoIterator<Item = &'k str>,
) -> Option<&'k str> {
    let normalize = |s: &str| s.to_lowercase().replace('-', "_");
    let unknown = normalize(unknown);
    known
        .into_iter()
        .map(|k| {
            let candidate = normalize(k);
            // Jaro-Winkler favours a shared beginning, which catches most typos in longer
            // keys; one edit (such as two letters swapped) catches them in short keys like `lua`.
            let score = if candidate == unknown {
                2.0
            } else if strsim::osa_distance(&unknown, &candidate) == 1 {
                1.0
            } else {
                strsim::jaro_winkler(&unknown, &candidate)
            };
            (score, k)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}
