//! "Did you mean" suggestions for mistyped or retired model names.

/// Levenshtein distance over bytes (alias names are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The family key of a name: its leading letters, so `gemma4`, `gemma-4-12b` and
/// `gemma3-1b` all belong to `gemma` and `phi4-14b` to `phi`.
pub fn family_key(name: &str) -> String {
    name.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_lowercase()
}

/// Squashes separators so `phi4-14b` and `phi-4-14b` compare equal.
fn squash(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect::<String>().to_ascii_lowercase()
}

/// Up to `limit` candidates from the same family as `query`, closest first.
///
/// Names from other families are never suggested, and neither are family members that
/// share nothing with the query beyond the family name: `gpt2` gets nothing rather than
/// noise. Close names (`qwen3.5-30b` → `qwen3.5-35b-*`) come first; failing those, the
/// members sharing the longest prefix (`deepseek-v4-27b` → `deepseek-v4-flash-*`).
pub fn similar<'a>(query: &str, candidates: impl IntoIterator<Item = &'a str>, limit: usize) -> Vec<String> {
    let family = family_key(query);
    if family.len() < 2 {
        return Vec::new();
    }
    let query = squash(query);
    let members: Vec<(&str, String)> =
        candidates.into_iter().filter(|c| family_key(c) == family).map(|c| (c, squash(c))).collect();

    let mut close: Vec<(usize, &str)> = members
        .iter()
        .filter_map(|(name, squashed)| {
            if squashed.starts_with(&query) {
                return Some((0, *name));
            }
            let prefix = squashed.get(..query.len().min(squashed.len())).unwrap_or(squashed);
            let near_prefix = edit_distance(&query, prefix);
            let whole = edit_distance(&query, squashed);
            (near_prefix <= 2 && whole <= (query.len() / 2).max(3)).then_some((near_prefix * 8 + whole, *name))
        })
        .collect();
    close.sort();
    if !close.is_empty() {
        return close.into_iter().take(limit).map(|(_, c)| c.to_string()).collect();
    }

    let mut sharing: Vec<(std::cmp::Reverse<usize>, &str)> = members
        .iter()
        .map(|(name, squashed)| {
            let common = query.bytes().zip(squashed.bytes()).take_while(|(a, b)| a == b).count();
            (std::cmp::Reverse(common), *name)
        })
        .filter(|(std::cmp::Reverse(common), _)| *common > family.len() + 1)
        .collect();
    sharing.sort();
    sharing.into_iter().take(limit).map(|(_, c)| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "qwen3.5-35b-8bit",
        "qwen3.5-4b-4bit",
        "qwen3.5-4b-8bit",
        "hermes3-8b-4bit",
        "phi-4-14b-4bit",
        "gpt-oss-20b-mxfp4-q8",
        "deepseek-v4-flash-4bit",
        "deepseek-r1-32b-4bit",
    ];

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions_stay_in_family() {
        assert_eq!(similar("qwen3.5-30b", NAMES.iter().copied(), 1), vec!["qwen3.5-35b-8bit"]);
        assert_eq!(similar("phi4-14b", NAMES.iter().copied(), 3), vec!["phi-4-14b-4bit"]);
        let four = similar("qwen3.5-4b", NAMES.iter().copied(), 3);
        assert_eq!(&four[..2], &["qwen3.5-4b-4bit", "qwen3.5-4b-8bit"]);
        assert!(similar("gpt2", NAMES.iter().copied(), 3).is_empty());
        assert_eq!(similar("deepseek-v4-27b", NAMES.iter().copied(), 3), vec!["deepseek-v4-flash-4bit"]);
        assert_eq!(similar("hermes", NAMES.iter().copied(), 3), vec!["hermes3-8b-4bit"]);
    }
}
