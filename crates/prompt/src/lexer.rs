//! Characters that remember where they were typed, and the words made of them.

/// One character of an expanded prompt and its 0-based character offset in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    /// The character.
    pub ch: char,
    /// Where it was typed.
    pub offset: usize,
}

/// A run of non-whitespace characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    /// The characters of the word.
    pub text: String,
    /// Where its first character was typed.
    pub offset: usize,
    /// Index of its first character in the expanded text.
    pub start: usize,
}

impl Word {
    /// The lowercased parameter name when the word is a flag: `--name`, or a long dash
    /// (U+2014) or en dash (U+2013) followed by the name, as phones autocorrect `--`. The
    /// name must start with an ASCII letter, so `--`, `--5` or `—` alone stay prompt text.
    pub fn flag_name(&self) -> Option<String> {
        let name = self
            .text
            .strip_prefix("--")
            .or_else(|| self.text.strip_prefix('\u{2014}'))
            .or_else(|| self.text.strip_prefix('\u{2013}'))?;
        if name.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
            Some(name.to_lowercase())
        } else {
            None
        }
    }
}

/// Each character of `input` with its offset.
pub(crate) fn locate(input: &str) -> Vec<Located> {
    input
        .chars()
        .enumerate()
        .map(|(offset, ch)| Located { ch, offset })
        .collect()
}

/// The text of located characters.
pub(crate) fn text(chars: &[Located]) -> String {
    chars.iter().map(|located| located.ch).collect()
}

/// Splits located characters into whitespace-separated words.
pub(crate) fn words(chars: &[Located]) -> Vec<Word> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    for (index, located) in chars.iter().enumerate() {
        if located.ch.is_whitespace() {
            words.extend(current.take());
        } else {
            current
                .get_or_insert_with(|| Word {
                    text: String::new(),
                    offset: located.offset,
                    start: index,
                })
                .text
                .push(located.ch);
        }
    }
    words.extend(current);
    words
}

/// `text` trimmed, with each run of whitespace replaced by one space.
pub(crate) fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str) -> Word {
        Word {
            text: text.to_string(),
            offset: 0,
            start: 0,
        }
    }

    #[test]
    fn words_keep_offsets() {
        let words = words(&locate("  a  bc\td "));
        let found: Vec<(&str, usize)> = words
            .iter()
            .map(|word| (word.text.as_str(), word.offset))
            .collect();
        assert_eq!(found, [("a", 2), ("bc", 5), ("d", 8)]);
    }

    #[test]
    fn flags_accept_dashes_and_any_case() {
        assert_eq!(word("--AR").flag_name().as_deref(), Some("ar"));
        assert_eq!(word("\u{2014}seed").flag_name().as_deref(), Some("seed"));
        assert_eq!(word("\u{2013}no").flag_name().as_deref(), Some("no"));
        assert_eq!(word("--").flag_name(), None);
        assert_eq!(word("--5").flag_name(), None);
        assert_eq!(word("\u{2014}").flag_name(), None);
        assert_eq!(word("-ar").flag_name(), None);
        assert_eq!(word("well--known").flag_name(), None);
    }

    #[test]
    fn collapse_trims_and_joins() {
        assert_eq!(collapse("  a \n\t b  c "), "a b c");
        assert_eq!(collapse(" \t "), "");
    }
}
