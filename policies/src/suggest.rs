//! "Did you mean ...?": the closest valid name to a mistyped one.
//!
//! Invariants:
//! - A suggestion is offered only when it is close: an optimal-string-alignment distance
//!   (insertions, deletions, substitutions and swaps of two neighbours each count 1), compared
//!   case-insensitively, of at most a third of the longer word's length (at least 1): a
//!   mistyped ending (`min_copy` for `min_copies`) is still found, `colour` never becomes
//!   `select`.
//! - Among equally close candidates the first one given wins, so suggestions are stable.
//! - A candidate equal to the typed word is never suggested.

/// The candidate closest to `word`, if one is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let typed: Vec<char> = word.to_lowercase().chars().collect();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let c: Vec<char> = candidate.to_lowercase().chars().collect();
        let limit = (typed.len().max(c.len()) / 3).max(1);
        if c.len().abs_diff(typed.len()) > limit {
            continue;
        }
        let d = distance(&typed, &c);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
pub(crate) fn distance(a: &[char], b: &[char]) -> usize {
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, row) in d.chunks_mut(w).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(a: &str, b: &str) -> usize {
        distance(
            &a.chars().collect::<Vec<_>>(),
            &b.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(dist("", ""), 0);
        assert_eq!(dist("abc", ""), 3);
        assert_eq!(dist("", "ab"), 2);
        assert_eq!(dist("kitten", "sitting"), 3);
        assert_eq!(dist("regoin", "region"), 1);
        assert_eq!(dist("min_copy", "min_copies"), 3);
    }

    #[test]
    fn suggests_only_close_names() {
        let keys = ["select", "min_copies"];
        assert_eq!(
            did_you_mean("min_copy", keys).as_deref(),
            Some("min_copies")
        );
        assert_eq!(did_you_mean("selcet", keys).as_deref(), Some("select"));
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(did_you_mean("rpo", ["rto"]).as_deref(), Some("rto"));
        assert_eq!(did_you_mean("rpo", ["retention"]), None);
        assert_eq!(did_you_mean("select", keys), None, "never the word itself");
        assert_eq!(
            did_you_mean("europe/berlin", ["Europe/Berlin"]).as_deref(),
            Some("Europe/Berlin"),
            "case is ignored"
        );
        assert_eq!(did_you_mean("ab", ["ba", "ac"]).as_deref(), Some("ba"));
        assert_eq!(
            did_you_mean("ax", ["ab", "ac"]).as_deref(),
            Some("ab"),
            "first wins"
        );
    }
}
