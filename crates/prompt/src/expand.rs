//! Brace permutations: `{red, blue} car` is two prompts. Expansion runs on the raw input,
//! before parameters are read, so braces may hold parameters too (`--ar {1:1, 16:9}`).

use crate::error::PromptError;
use crate::lexer::Located;

/// How deep braces may nest. Keeps the recursive parser's stack small on hostile input.
pub(crate) const MAX_DEPTH: usize = 16;

/// A piece of a prompt with braces.
#[derive(Debug)]
enum Node {
    /// Characters copied as they are.
    Text(Vec<Located>),
    /// `{a, b, …}`: one alternative per comma-separated sequence.
    Group(Vec<Vec<Node>>),
}

/// A prompt whose brace groups have been parsed but not yet multiplied out.
#[derive(Debug)]
pub(crate) struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Reads the braces of `chars`. `\{`, `\}` and `\,` are literal characters.
    pub fn parse(chars: &[Located]) -> Result<Self, PromptError> {
        let mut parser = Parser { chars, position: 0 };
        let nodes = parser.sequence(0, false)?;
        Ok(Self { nodes })
    }

    /// How many prompts the template expands to, saturating at `u64::MAX`.
    pub fn count(&self) -> u64 {
        count(&self.nodes)
    }

    /// Every prompt of the cartesian product, the first group varying slowest. Makes
    /// `count()` copies of the text: check the count first.
    pub fn expand(&self) -> Vec<Vec<Located>> {
        expand(&self.nodes)
    }
}

struct Parser<'a> {
    chars: &'a [Located],
    position: usize,
}

impl Parser<'_> {
    fn peek(&self, ahead: usize) -> Option<Located> {
        self.chars.get(self.position + ahead).copied()
    }

    /// Reads nodes until the end, or inside a group until its `,` or `}` (left unread).
    fn sequence(&mut self, depth: usize, in_group: bool) -> Result<Vec<Node>, PromptError> {
        let mut nodes = Vec::new();
        let mut text = Vec::new();
        while let Some(located) = self.peek(0) {
            match located.ch {
                '\\' if matches!(self.peek(1), Some(next) if matches!(next.ch, '{' | '}' | ',')) => {
                    text.extend(self.peek(1));
                    self.position += 2;
                }
                '{' => {
                    if depth >= MAX_DEPTH {
                        return Err(PromptError::BracesTooDeep {
                            offset: located.offset,
                            max: MAX_DEPTH,
                        });
                    }
                    self.position += 1;
                    if !text.is_empty() {
                        nodes.push(Node::Text(std::mem::take(&mut text)));
                    }
                    nodes.push(self.group(depth + 1, located.offset)?);
                }
                '}' | ',' if in_group => break,
                '}' => {
                    return Err(PromptError::UnopenedBrace {
                        offset: located.offset,
                    })
                }
                _ => {
                    text.push(located);
                    self.position += 1;
                }
            }
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text));
        }
        Ok(nodes)
    }

    /// Reads the alternatives of a group whose `{` at `open` has just been read.
    fn group(&mut self, depth: usize, open: usize) -> Result<Node, PromptError> {
        let mut alternatives = Vec::new();
        loop {
            let mut alternative = self.sequence(depth, true)?;
            trim(&mut alternative);
            alternatives.push(alternative);
            match self.peek(0).map(|located| located.ch) {
                Some(',') => self.position += 1,
                Some('}') => {
                    self.position += 1;
                    return Ok(Node::Group(alternatives));
                }
                _ => return Err(PromptError::UnclosedBrace { offset: open }),
            }
        }
    }
}

/// Drops whitespace at both ends of an alternative, so `{1, 2}` after `::` is a weight.
fn trim(nodes: &mut [Node]) {
    if let Some(Node::Text(text)) = nodes.first_mut() {
        let leading = text.iter().take_while(|c| c.ch.is_whitespace()).count();
        text.drain(..leading);
    }
    if let Some(Node::Text(text)) = nodes.last_mut() {
        while text.last().is_some_and(|c| c.ch.is_whitespace()) {
            text.pop();
        }
    }
}

fn count(nodes: &[Node]) -> u64 {
    nodes.iter().fold(1u64, |product, node| match node {
        Node::Text(_) => product,
        Node::Group(alternatives) => {
            let sum = alternatives.iter().fold(0u64, |sum, alternative| {
                sum.saturating_add(count(alternative))
            });
            product.saturating_mul(sum)
        }
    })
}

fn expand(nodes: &[Node]) -> Vec<Vec<Located>> {
    let mut prompts = vec![Vec::new()];
    for node in nodes {
        match node {
            Node::Text(text) => {
                for prompt in &mut prompts {
                    prompt.extend_from_slice(text);
                }
            }
            Node::Group(alternatives) => {
                let endings: Vec<Vec<Located>> = alternatives
                    .iter()
                    .flat_map(|nodes| expand(nodes))
                    .collect();
                prompts = prompts
                    .iter()
                    .flat_map(|prompt| {
                        endings.iter().map(move |ending| {
                            let mut joined = prompt.clone();
                            joined.extend_from_slice(ending);
                            joined
                        })
                    })
                    .collect();
            }
        }
    }
    prompts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::{locate, text};

    fn expansions(input: &str) -> Result<Vec<String>, PromptError> {
        let template = Template::parse(&locate(input))?;
        let prompts: Vec<String> = template.expand().iter().map(|p| text(p)).collect();
        assert_eq!(template.count(), prompts.len() as u64);
        Ok(prompts)
    }

    #[test]
    fn no_braces_is_one_prompt() {
        assert_eq!(expansions("a red car").unwrap(), ["a red car"]);
        assert_eq!(expansions("").unwrap(), [""]);
    }

    #[test]
    fn groups_multiply_first_varying_slowest() {
        assert_eq!(
            expansions("{red, blue} {car,bike}").unwrap(),
            ["red car", "red bike", "blue car", "blue bike"]
        );
    }

    #[test]
    fn groups_nest() {
        assert_eq!(
            expansions("a {big {red, blue}, small} car").unwrap(),
            ["a big red car", "a big blue car", "a small car"]
        );
    }

    #[test]
    fn alternatives_are_trimmed_and_may_be_empty() {
        assert_eq!(expansions("cat::{ 1 , 2 }").unwrap(), ["cat::1", "cat::2"]);
        assert_eq!(expansions("{, very} big").unwrap(), [" big", "very big"]);
        assert_eq!(expansions("{}x").unwrap(), ["x"]);
    }

    #[test]
    fn escapes_are_literal() {
        assert_eq!(expansions(r"\{a, b\}").unwrap(), ["{a, b}"]);
        assert_eq!(expansions(r"{a\, b, c}").unwrap(), ["a, b", "c"]);
        assert_eq!(expansions(r"a\b").unwrap(), [r"a\b"]);
    }

    #[test]
    fn offsets_point_into_the_input() {
        let template = Template::parse(&locate("x {ab, cd}")).unwrap();
        let prompts = template.expand();
        let offsets: Vec<usize> = prompts[1].iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0, 1, 7, 8]);
    }

    #[test]
    fn unbalanced_braces_name_the_brace() {
        assert_eq!(
            expansions("a {b, c").unwrap_err(),
            PromptError::UnclosedBrace { offset: 2 }
        );
        assert_eq!(
            expansions("a b} c").unwrap_err(),
            PromptError::UnopenedBrace { offset: 3 }
        );
        assert_eq!(
            expansions("{a}}").unwrap_err(),
            PromptError::UnopenedBrace { offset: 3 }
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "{".repeat(MAX_DEPTH + 1);
        assert_eq!(
            expansions(&deep).unwrap_err(),
            PromptError::BracesTooDeep {
                offset: MAX_DEPTH,
                max: MAX_DEPTH
            }
        );
        let allowed = format!("{}x{}", "{".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(expansions(&allowed).unwrap(), ["x"]);
    }

    #[test]
    fn count_saturates_without_expanding() {
        let huge = "{a,b,c,d}".repeat(40);
        let template = Template::parse(&locate(&huge)).unwrap();
        assert_eq!(template.count(), u64::MAX);
    }
}
