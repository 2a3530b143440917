// SPDX-License-Identifier: Apache-2.0
//! Renders minijinja templates: airlock's own (embedded from templates/ at
//! compile time) shadowed by a recipe's template directory.
//!
//! Undefined variables are errors, so a typo in a template or a missing
//! recipe value stops the build instead of baking an empty string.

use std::path::PathBuf;

use anyhow::{bail, Result};
use minijinja::{Environment, UndefinedBehavior};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// `extra` is a recipe's template directory; its files shadow airlock's.
    pub fn new(extra: Option<PathBuf>) -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_loader(move |name| {
            if name.split('/').any(|c| c == ".." || c.is_empty()) {
                return Ok(None);
            }
            if let Some(dir) = &extra {
                let p = dir.join(name);
                // A template is read from the recipe's folder only: a link
                // out of it (to /etc/shadow, say) would bake a host file in.
                let inside = match (p.canonicalize(), dir.canonicalize()) {
                    (Ok(f), Ok(d)) => f.starts_with(d),
                    _ => true,
                };
                if !inside {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!(
                            "template {} leads out of the template folder {}",
                            p.display(),
                            dir.display()
                        ),
                    ));
                }
                if p.is_file() {
                    return std::fs::read_to_string(&p).map(Some).map_err(|e| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("reading template {}: {e}", p.display()),
                        )
                    });
                }
            }
            Ok(builtin::BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| text.to_string()))
        });
        Renderer { env }
    }

    /// Renders template `name` with `ctx`; errors name the template and line.
    pub fn render(&self, name: &str, ctx: &serde_json::Value) -> Result<String> {
        let tmpl = match self.env.get_template(name) {
            Ok(t) => t,
            Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound => {
                bail!("template {name:?} was found neither in the recipe's template_dir nor in airlock's templates")
            }
            Err(e) => bail!(describe(name, &e)),
        };
        tmpl.render(ctx)
            .map_err(|e| anyhow::anyhow!(describe(name, &e)))
    }
}

fn describe(name: &str, e: &minijinja::Error) -> String {
    let file = e.name().unwrap_or(name);
    let mut msg = match e.line() {
        Some(l) => format!("template {file}:{l}: {}", e.kind()),
        None => format!("template {file}: {}", e.kind()),
    };
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        msg.push_str(" (a variable the template uses is not set: check the recipe's [vars] and the template)");
    }
    msg
}

/// Names of airlock's own templates, for `--help` style listings and tests.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtin::BUILTIN.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_undefined_names_template_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.j2"), "line one\nhost={{ node.hostnme }}\n").unwrap();
        let r = Renderer::new(Some(d.path().to_path_buf()));
        let err = r
            .render("t.j2", &json!({"node": {"hostname": "a"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.j2:2"), "{err}");
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn recipe_dir_shadows_builtin() {
        let name = builtin_names().next().expect("airlock ships templates");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "shadowed {{ x }}").unwrap();
        let r = Renderer::new(Some(d.path().to_path_buf()));
        assert_eq!(r.render(name, &json!({"x": 1})).unwrap(), "shadowed 1");
    }

    #[test]
    fn a_template_linking_out_of_its_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("host-secret");
        std::fs::write(&secret, "root:hash").unwrap();
        let t = d.path().join("templates");
        std::fs::create_dir(&t).unwrap();
        std::os::unix::fs::symlink(&secret, t.join("x.j2")).unwrap();
        let r = Renderer::new(Some(t));
        let err = r.render("x.j2", &json!({})).unwrap_err().to_string();
        assert!(err.contains("leads out of the template folder"), "{err}");
    }

    #[test]
    fn missing_template_is_clear_and_no_escape() {
        let r = Renderer::new(None);
        let err = r.render("nope.j2", &json!({})).unwrap_err().to_string();
        assert!(err.contains("nope.j2"), "{err}");
        assert!(r.render("../Cargo.toml", &json!({})).is_err());
    }
}
