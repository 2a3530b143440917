// SPDX-License-Identifier: Apache-2.0
//! Where every value of a recipe is written, by key path (`boot.cmdline[0]`,
//! `user[1].password_hash`), so checks on fields that are not `Spanned` in
//! the typed recipe still name `file:line:column`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// One parsed value with its children's positions.
enum Node {
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(x) = a.next_element()? {
            out.push(x);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = a.next_key::<String>()? {
            // Dates arrive as a one-key map with a private key: not a table.
            if k.starts_with("$__toml_private") {
                a.next_value::<IgnoredAny>()?;
                return Ok(Node::Other);
            }
            out.push((k, a.next_value()?));
        }
        Ok(Node::Map(out))
    }
}

/// The byte span and, for strings, the value of every key path.
#[derive(Debug, Default)]
pub struct Spans {
    map: BTreeMap<String, (Range<usize>, Option<String>)>,
    order: Vec<String>,
}

impl Spans {
    /// Parses recipe text (already parsed once as a recipe).
    pub fn of(text: &str) -> anyhow::Result<Spans> {
        let mut s = Spans::default();
        match toml::from_str::<Node>(text)? {
            Node::Map(entries) => {
                for (k, v) in entries {
                    s.add(k, v);
                }
            }
            _ => anyhow::bail!("a recipe is a TOML table"),
        }
        Ok(s)
    }

    fn add(&mut self, path: String, v: Spanned<Node>) {
        let span = v.span();
        match v.into_inner() {
            Node::Str(s) => self.put(path, span, Some(s)),
            Node::Seq(items) => {
                self.put(path.clone(), span, None);
                for (i, x) in items.into_iter().enumerate() {
                    self.add(format!("{path}[{i}]"), x);
                }
            }
            Node::Map(entries) => {
                self.put(path.clone(), span, None);
                for (k, x) in entries {
                    self.add(format!("{path}.{k}"), x);
                }
            }
            Node::Other => self.put(path, span, None),
        }
    }

    fn put(&mut self, path: String, span: Range<usize>, s: Option<String>) {
        self.order.push(path.clone());
        self.map.insert(path, (span, s));
    }

    /// The span of the value at `path`, if the recipe writes it.
    pub fn span(&self, path: &str) -> Option<Range<usize>> {
        self.map.get(path).map(|(r, _)| r.clone())
    }

    /// Every string value with its path, in the order of the recipe.
    pub fn strings(&self) -> impl Iterator<Item = (&str, Range<usize>, &str)> {
        self.order.iter().filter_map(|p| {
            let (r, s) = self.map.get(p)?;
            Some((p.as_str(), r.clone(), s.as_deref()?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_point_at_values() {
        let text = "name = \"x\"\n[boot]\ncmdline = [\"a\", \"b\"]\n\n[[user]]\nname = \"u\"\n\
                    [[user]]\nname = \"v\"\nwhen = 1979-05-27\n";
        let s = Spans::of(text).unwrap();
        let at = |p: &str| &text[s.span(p).unwrap()];
        assert_eq!(at("name"), "\"x\"");
        assert_eq!(at("boot.cmdline[1]"), "\"b\"");
        assert_eq!(at("user[1].name"), "\"v\"");
        assert_eq!(at("user[1].when"), "1979-05-27");
        let strings: Vec<_> = s.strings().map(|(p, _, v)| (p, v)).collect();
        assert_eq!(
            strings,
            [
                ("name", "x"),
                ("boot.cmdline[0]", "a"),
                ("boot.cmdline[1]", "b"),
                ("user[0].name", "u"),
                ("user[1].name", "v")
            ]
        );
    }
}
