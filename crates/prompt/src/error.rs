//! What can be wrong with a prompt, worded for the person who typed it.

/// Why a prompt was refused. The `Display` form is one line meant for the user: it quotes the
/// offending token as it was typed, says where it is (1-based character, counted in the input
/// before brace expansion) and what would be accepted. `offset` fields are 0-based character
/// indexes into the same input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// A `--name` that is not a parameter of the language.
    #[error(
        "`{token}` (character {}): unknown parameter; the parameters are {}",
        .offset + 1,
        crate::params::flag_list()
    )]
    UnknownFlag {
        /// The flag as typed.
        token: String,
        /// Where the flag starts.
        offset: usize,
    },

    /// A parameter whose value is malformed or out of range.
    #[error("`{token}` (character {}): {expected}", .offset + 1)]
    InvalidValue {
        /// The flag and its value as typed.
        token: String,
        /// Where the flag starts.
        offset: usize,
        /// What the value must be.
        expected: String,
    },

    /// A parameter given without its value.
    #[error("`{token}` (character {}) needs a value: {expected}", .offset + 1)]
    MissingValue {
        /// The flag as typed.
        token: String,
        /// Where the flag starts.
        offset: usize,
        /// What the value must be.
        expected: String,
    },

    /// A parameter given twice (only `--no` may repeat).
    #[error(
        "`{token}` (character {}): this parameter is already set; give it once (only --no may repeat)",
        .offset + 1
    )]
    DuplicateFlag {
        /// The second occurrence as typed.
        token: String,
        /// Where the second occurrence starts.
        offset: usize,
    },

    /// Two parameters that set the same thing in different ways.
    #[error("`{token}` (character {}) conflicts with `{other}`: {reason}", .offset + 1)]
    ConflictingFlags {
        /// The later of the two flags, with its value.
        token: String,
        /// Where the later flag starts.
        offset: usize,
        /// The earlier flag, with its value.
        other: String,
        /// What both of them set.
        reason: String,
    },

    /// Text after a parameter that takes exactly one value.
    #[error(
        "`{token}` (character {}) is not a value of `{flag}`; put prompt text before the first parameter",
        .offset + 1
    )]
    TextAfterParameters {
        /// The stray word.
        token: String,
        /// Where the stray word starts.
        offset: usize,
        /// The flag it follows.
        flag: String,
    },

    /// A `{` without its `}`.
    #[error(
        "`{{` (character {}) is never closed; add a `}}` or write `\\{{` for a literal brace",
        .offset + 1
    )]
    UnclosedBrace {
        /// Where the brace is.
        offset: usize,
    },

    /// A `}` without its `{`.
    #[error(
        "`}}` (character {}) has no matching `{{`; remove it or write `\\}}` for a literal brace",
        .offset + 1
    )]
    UnopenedBrace {
        /// Where the brace is.
        offset: usize,
    },

    /// Braces nested deeper than the language allows.
    #[error("`{{` (character {}): braces may nest at most {max} deep", .offset + 1)]
    BracesTooDeep {
        /// Where the first brace beyond the limit is.
        offset: usize,
        /// The deepest nesting allowed.
        max: usize,
    },

    /// Permutations × repeat exceed the job cap.
    #[error(
        "this prompt would make {}{jobs} jobs (permutations × repeat); at most {max} are allowed",
        if *.at_least { "at least " } else { "" }
    )]
    TooManyJobs {
        /// How many jobs the prompt makes (saturating).
        jobs: u64,
        /// Whether `jobs` is a lower bound: the count was too large to work out exactly.
        at_least: bool,
        /// The cap from the limits.
        max: u32,
    },

    /// No prompt text once parameters are removed.
    #[error("the prompt is empty: describe the image before the parameters")]
    EmptyPrompt,

    /// The prompt text is longer than the limit.
    #[error("the prompt is {chars} characters long; at most {max} are allowed")]
    PromptTooLong {
        /// Length of the cleaned prompt text.
        chars: usize,
        /// The limit.
        max: usize,
    },

    /// The negative prompt is longer than the limit.
    #[error("the negative prompt (--no and --negative) is {chars} characters long; at most {max} are allowed")]
    NegativeTooLong {
        /// Length of the combined negative prompt.
        chars: usize,
        /// The limit.
        max: usize,
    },

    /// A multi-prompt weight outside the allowed range.
    #[error(
        "`{token}` (character {}): a multi-prompt weight must be a number from {} to {}",
        .offset + 1,
        -crate::multiprompt::MAX_WEIGHT,
        crate::multiprompt::MAX_WEIGHT
    )]
    InvalidWeight {
        /// The `::weight` as typed.
        token: String,
        /// Where the `::` starts.
        offset: usize,
    },

    /// A `::weight` with no text before it.
    #[error("`{token}` (character {}) weighs an empty part; put text before the `::`", .offset + 1)]
    WeightWithoutText {
        /// The `::weight` as typed.
        token: String,
        /// Where the `::` starts.
        offset: usize,
    },

    /// The multi-prompt weights do not add up to a positive number.
    #[error("the multi-prompt weights add up to {total}; their total must be positive")]
    NonPositiveWeights {
        /// The sum of the weights.
        total: f64,
    },
}

impl PromptError {
    /// The 0-based character offset of the offending token in the input, when there is one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            Self::UnknownFlag { offset, .. }
            | Self::InvalidValue { offset, .. }
            | Self::MissingValue { offset, .. }
            | Self::DuplicateFlag { offset, .. }
            | Self::ConflictingFlags { offset, .. }
            | Self::TextAfterParameters { offset, .. }
            | Self::UnclosedBrace { offset }
            | Self::UnopenedBrace { offset }
            | Self::BracesTooDeep { offset, .. }
            | Self::InvalidWeight { offset, .. }
            | Self::WeightWithoutText { offset, .. } => Some(*offset),
            Self::TooManyJobs { .. }
            | Self::EmptyPrompt
            | Self::PromptTooLong { .. }
            | Self::NegativeTooLong { .. }
            | Self::NonPositiveWeights { .. } => None,
        }
    }
}
