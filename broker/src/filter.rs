//! Tag subscription expressions (`*`, `TagA || TagB`) evaluated on the broker.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::storage::{MessageFilter, MessageRecord, tag_hash};

/// A parsed tag expression: every message, or messages whose tag is one of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagExpression {
    All,
    Tags { tags: HashSet<String>, hashes: HashSet<u64> },
}

impl TagExpression {
    /// Parses RocketMQ's syntax: `*` or empty for all, else tags joined by `||`.
    pub fn parse(expression: &str) -> Result<Self> {
        let trimmed = expression.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(TagExpression::All);
        }
        let mut tags = HashSet::new();
        for part in trimmed.split("||") {
            let tag = part.trim();
            if tag.is_empty() {
                return Err(Error::TagExpressionInvalid {
                    expression: expression.to_string(),
                    reason: "empty tag between `||`",
                });
            }
            if tag.contains(char::is_whitespace) || tag == "*" {
                return Err(Error::TagExpressionInvalid {
                    expression: expression.to_string(),
                    reason: "tags hold no whitespace, and `*` stands alone",
                });
            }
            tags.insert(tag.to_string());
        }
        let hashes = tags.iter().map(|tag| tag_hash(Some(tag))).collect();
        Ok(TagExpression::Tags { tags, hashes })
    }

    /// Whether a message with this tag matches.
    pub fn matches_tag(&self, tag: Option<&str>) -> bool {
        match self {
            TagExpression::All => true,
            TagExpression::Tags { tags, .. } => tag.is_some_and(|tag| tags.contains(tag)),
        }
    }
}

impl MessageFilter for TagExpression {
    fn matches_tag_hash(&self, hash: u64) -> bool {
        match self {
            TagExpression::All => true,
            TagExpression::Tags { hashes, .. } => hashes.contains(&hash),
        }
    }

    fn matches(&self, message: &MessageRecord) -> bool {
        self.matches_tag(message.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cases() {
        let check = |expression: &str, tag: Option<&str>, expected: Option<bool>| match (
            TagExpression::parse(expression),
            expected,
        ) {
            (Ok(parsed), Some(expected)) => {
                assert_eq!(parsed.matches_tag(tag), expected, "{expression} {tag:?}")
            }
            (Err(_), None) => {}
            (other, expected) => panic!("{expression}: got {other:?}, expected {expected:?}"),
        };
        check("*", None, Some(true));
        check("", Some("A"), Some(true));
        check("TagA", Some("TagA"), Some(true));
        check("TagA", Some("TagB"), Some(false));
        check("TagA || TagB", Some("TagB"), Some(true));
        check("TagA||TagB", None, Some(false));
        check("TagA || ", Some("TagA"), None);
        check("a b", Some("a"), None);
    }
}
