//! `--config FILE.toml` (env `GRANDSTAND_CONFIG`): every option of the command line in one file,
//! keys named like the long flags in snake_case at the top level (`http_addr = "0.0.0.0:8080"`,
//! `matches = 3`, `cors_origins = ["https://a.example", "https://b.example"]`).
//!
//! Precedence is flag > env > file > default. The file is applied by adding its values to the
//! command line for the options that neither a flag nor their env var set, so clap validates
//! and parses them exactly as it does flags (a bad value names the option the same way).
//! One file may serve a whole deployment: a key that is an option of some other role is
//! ignored by a role that does not take it; a key that is no option of any role is an error
//! naming the key.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgAction, Command, CommandFactory};

use crate::cli::Cli;

/// The command line with the file's values added, and which options came from the file.
pub struct Applied {
    pub argv: Vec<OsString>,
    pub from_file: BTreeSet<String>,
}

/// Where the config file is: `--config` on the command line, else `GRANDSTAND_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("GRANDSTAND_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The command the arguments select: a role's subcommand, or the top level (every role).
fn selected(root: &Command, argv: &[OsString]) -> Command {
    let first = argv.get(1).map(|a| a.to_string_lossy().into_owned());
    first
        .and_then(|name| {
            root.get_subcommands()
                .find(|s| s.get_name() == name || s.get_all_aliases().any(|a| a == name))
                .cloned()
        })
        .unwrap_or_else(|| root.clone())
}

/// Every long option any role takes.
fn every_option(root: &Command) -> BTreeSet<String> {
    std::iter::once(root)
        .chain(root.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

pub fn apply(argv: Vec<OsString>) -> anyhow::Result<Applied> {
    let Some(path) = config_path(&argv) else {
        return Ok(Applied {
            argv,
            from_file: BTreeSet::new(),
        });
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    apply_text(argv, &path, &text)
}

fn apply_text(mut argv: Vec<OsString>, path: &Path, text: &str) -> anyhow::Result<Applied> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let root = Cli::command();
    let command = selected(&root, &argv);
    let known = every_option(&root);
    let given: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        if long == "config" {
            bail!("{}: `config` cannot name another file", path.display());
        }
        if !known.contains(&long) {
            bail!(
                "{}: unknown key `{key}` (keys are the long options in snake_case, see --help)",
                path.display()
            );
        }
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            continue; // another role's option
        };
        let flag = format!("--{long}");
        let on_command_line = given
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        let in_env = arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some_and(|v| !v.is_empty()));
        if on_command_line || in_env {
            continue;
        }
        let rendered = render(value).with_context(|| format!("{}: `{key}`", path.display()))?;
        match arg.get_action() {
            ArgAction::SetTrue => {
                if rendered == "true" {
                    argv.push(flag.into());
                } else if rendered != "false" {
                    bail!("{}: `{key}` is true or false", path.display());
                }
            }
            _ => argv.push(format!("{flag}={rendered}").into()),
        }
        from_file.insert(arg.get_id().to_string());
    }
    Ok(Applied { argv, from_file })
}

/// A TOML value as the command line would spell it (lists comma separated).
fn render(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(render)
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Table(_) => bail!("expected a value, found a table (keys are top level)"),
    })
}

/// Options whose values are secrets, whole.
fn is_secret(key: &str) -> bool {
    ["secret", "secrets", "password", "token", "key"]
        .iter()
        .any(|s| key.split('_').any(|w| w == *s))
}

/// A value fit to print: secrets masked, and passwords inside URLs.
pub fn masked(key: &str, value: &str) -> String {
    if is_secret(key) {
        return "********".into();
    }
    value
        .split(',')
        .map(|part| match url::Url::parse(part) {
            Ok(mut u)
                if u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password") =>
            {
                let _ = u.set_password(Some("********"));
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "********".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !pairs.is_empty() {
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The effective configuration of `role` (every role when `None`), as a config file: each
/// option with its value and where the value came from.
pub fn print(role: Option<&str>, config: Option<&Path>) -> anyhow::Result<String> {
    let mut argv: Vec<OsString> = vec!["grandstand".into()];
    argv.extend(role.map(OsString::from));
    if let Some(path) = config {
        argv.push("--config".into());
        argv.push(path.into());
    }
    let applied = apply(argv)?;
    let root = Cli::command();
    let command = selected(&root, &applied.argv);
    let matches = root
        .clone()
        .try_get_matches_from(&applied.argv)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let matches = match role {
        Some(_) => matches
            .subcommand()
            .map(|(_, m)| m.clone())
            .context("no such role")?,
        None => matches,
    };
    let mut out = format!(
        "# grandstand {}: effective configuration (flag > env > file > default)\n",
        role.unwrap_or("all")
    );
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "config" | "help" | "version") {
            continue;
        }
        let key = long.replace('-', "_");
        let values: Option<Vec<String>> = matches.get_raw(id).map(|vals| {
            vals.map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        let source = if applied.from_file.contains(id) {
            "file"
        } else {
            match matches.value_source(id) {
                Some(clap::parser::ValueSource::EnvVariable) => "env",
                Some(clap::parser::ValueSource::CommandLine) => "flag",
                _ => "default",
            }
        };
        match values {
            Some(values) if arg.get_action().takes_values() => {
                let value = masked(&key, &values.join(","));
                out.push_str(&format!(
                    "{key} = {}  # {source}\n",
                    toml::Value::String(value)
                ));
            }
            _ if matches!(arg.get_action(), ArgAction::SetTrue) => {
                let on = matches.get_flag(id);
                out.push_str(&format!("{key} = {on}  # {source}\n"));
            }
            _ => out.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(args: &[&str], text: &str) -> anyhow::Result<Applied> {
        let argv = std::iter::once("grandstand")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        apply_text(argv, Path::new("test.toml"), text)
    }

    fn tail(a: &Applied) -> Vec<String> {
        a.argv
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn file_values_become_options_unless_a_flag_set_them() {
        let a = applied(
            &["gateway", "--drain-secs", "3"],
            "drain_secs = 9\ncors_origins = [\"https://a.example\", \"https://b.example\"]\n",
        )
        .unwrap();
        assert_eq!(
            tail(&a),
            [
                "grandstand",
                "gateway",
                "--drain-secs",
                "3",
                "--cors-origins=https://a.example,https://b.example"
            ]
        );
        assert!(a.from_file.contains("cors_origins") && !a.from_file.contains("drain_secs"));
    }

    #[test]
    fn unknown_keys_are_named_and_other_roles_keys_ignored() {
        let e = applied(&[], "matchs = 3\n").err().unwrap().to_string();
        assert!(e.contains("`matchs`"), "{e}");
        // `matches` is the game server's and all-in-one's, not the gateway's.
        let a = applied(&["gateway"], "matches = 3\n").unwrap();
        assert_eq!(tail(&a), ["grandstand", "gateway"]);
        let e = applied(&[], "[http]\naddr = 1\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`http`"), "{e}");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(masked("token_secret", "hunter2"), "********");
        assert_eq!(masked("jwt_secrets", "a,b"), "********");
        assert_eq!(
            masked(
                "database_url",
                "postgres://app:hunter2@db:5432/g?sslmode=require"
            ),
            "postgres://app:********@db:5432/g?sslmode=require"
        );
        assert_eq!(
            masked("redis_url", "redis://cache:6379"),
            "redis://cache:6379"
        );
        assert_eq!(masked("http_addr", "0.0.0.0:8080"), "0.0.0.0:8080");
    }
}
