//! `--config FILE` (or `CUSTODY_CONFIG`): one TOML file per deployment in
//! which every flag can be set. Top-level keys are the global flags
//! (`nats`, `nkey`); a table per command holds that command's flags
//! (`[up]`, `[ledger]`, `[projection]`, ...), named as on the command line
//! (`checkpoint_every` or `checkpoint-every`). A flag given on the command
//! line wins over the file. Every key of every table is checked against
//! the command's flags, so a misspelt setting is an error, not ignored.
//!
//! The file becomes flags: `key = "v"` → `--key v`, a number likewise,
//! `key = true` → `--key` (`false`: left out), `key = ["a", "b"]` →
//! `--key a --key b`. They are put right after the command's name, ahead
//! of the flags typed, and clap keeps the last value of a flag.

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};

use super::Cli;

/// The command line, every command letting a later flag override an
/// earlier one (a typed flag overrides the file's).
fn command() -> clap::Command {
    fn override_self(c: clap::Command) -> clap::Command {
        let names: Vec<String> = c.get_subcommands().map(|s| s.get_name().to_owned()).collect();
        let mut c = c.args_override_self(true);
        for n in names {
            c = c.mut_subcommand(n, override_self);
        }
        c
    }
    let mut cli = override_self(Cli::command());
    // Global flags reach every command (a config file's `nats` goes after
    // the command's name); a command that never connects to NATS, or never
    // reads a context, takes them without listing them in its help: its
    // own hidden flag of the same name stands in for the global one.
    for (name, hidden) in NOT_USED {
        cli = cli.mut_subcommand(name, |mut c| {
            for flag in *hidden {
                c = c.arg(clap::Arg::new(*flag).long(*flag).hide(true).action(clap::ArgAction::Set));
            }
            c
        });
    }
    cli
}

/// Global flags a command has no use for, hidden from its help.
const NOT_USED: &[(&str, &[&str])] = &[
    ("keygen", &["nats", "nkey", "context"]),
    ("key", &["nats", "nkey", "context"]),
    ("certs", &["nats", "nkey", "context"]),
    ("http-sign", &["nats", "nkey", "context"]),
    ("verify-certificate", &["nats", "nkey", "context"]),
    ("witness", &["nats", "nkey", "context"]),
    ("bench", &["nats", "nkey", "context"]),
    ("up", &["nkey", "context"]),
    ("ledger", &["context"]),
    ("projection", &["context"]),
    ("gateway", &["context"]),
    ("authz", &["context"]),
    ("edge", &["context"]),
    ("restore", &["context"]),
];

/// Parses the process's arguments, the config file's flags put in.
pub fn parse() -> Cli {
    let args: Vec<OsString> = std::env::args_os().collect();
    let args = match expand(args, std::env::var_os("CUSTODY_CONFIG")) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("custody: {e:#}");
            std::process::exit(2);
        }
    };
    let matches = command().get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `args` with the flags of the config file (from `--config FILE` among
/// them, else `env`) inserted after the command's name.
pub fn expand(mut args: Vec<OsString>, env: Option<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut file = env.filter(|f| !f.is_empty());
    let mut i = 1;
    while i < args.len() && args[i] != "--" {
        if args[i] == "--config" {
            anyhow::ensure!(i + 1 < args.len(), "--config needs a file");
            file = Some(args.remove(i + 1));
            args.remove(i);
        } else if let Some(f) = args[i].to_str().and_then(|a| a.strip_prefix("--config=")) {
            file = Some(f.into());
            args.remove(i);
        } else {
            i += 1;
        }
    }
    let Some(file) = file else { return Ok(args) };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let flags = flags_of(&text).with_context(|| format!("config file {}", path.display()))?;
    let Some(at) = command_position(&args) else { return Ok(args) };
    let name = args[at].to_string_lossy().into_owned();
    let mut out: Vec<OsString> = vec![args[0].clone(), args[at].clone()];
    out.extend(flags.global.iter().map(OsString::from));
    if let Some(own) = flags.commands.iter().find(|(n, _)| *n == name) {
        out.extend(own.1.iter().map(OsString::from));
    }
    // What was typed: its global flags (allowed after the command), then
    // the rest, last so that it wins.
    out.extend(args[1..at].iter().cloned());
    out.extend(args[at + 1..].iter().cloned());
    Ok(out)
}

/// Flags a config file (or `CUSTODY_CONFIG`) may never set: test switches
/// that would falsify what the ledger records, accepted only when typed.
const COMMAND_LINE_ONLY: &[&str] = &["test-clock-file"];

/// The flags a config file sets: global ones, and each command's.
#[derive(Debug, Default, PartialEq)]
struct Flags {
    global: Vec<String>,
    commands: Vec<(String, Vec<String>)>,
}

/// Reads a config file's text into flags, checking every key against the
/// flags its command has.
fn flags_of(text: &str) -> anyhow::Result<Flags> {
    let table: toml::Table = text.parse().context("not TOML")?;
    let cli = command();
    let mut flags = Flags::default();
    for (key, value) in &table {
        match value {
            toml::Value::Table(settings) => {
                let sub = cli.find_subcommand(key).with_context(|| format!("[{key}]: custody has no command {key:?}"))?;
                let mut own = Vec::new();
                for (k, v) in settings {
                    let long = k.replace('_', "-");
                    anyhow::ensure!(
                        !COMMAND_LINE_ONLY.contains(&long.as_str()),
                        "[{key}] {k}: --{long} is a test switch, accepted only on the command line, never from a config file"
                    );
                    let known = sub.get_arguments().chain(cli.get_arguments()).any(|a| a.get_long() == Some(long.as_str()) && long != "config");
                    anyhow::ensure!(known, "[{key}] {k}: `custody {key}` has no flag --{long} (`custody {key} --help` lists them)");
                    push(&mut own, &long, v).with_context(|| format!("[{key}] {k}"))?;
                }
                flags.commands.push((key.clone(), own));
            }
            v => {
                let long = key.replace('_', "-");
                let known = cli.get_arguments().any(|a| a.get_long() == Some(long.as_str()) && long != "config");
                anyhow::ensure!(known, "{key}: not a global flag (those are nats and nkey; a command's go in its table, [up], [ledger], ...)");
                push(&mut flags.global, &long, v).with_context(|| key.clone())?;
            }
        }
    }
    Ok(flags)
}

fn push(out: &mut Vec<String>, long: &str, value: &toml::Value) -> anyhow::Result<()> {
    match value {
        toml::Value::Boolean(true) => out.push(format!("--{long}")),
        toml::Value::Boolean(false) => {}
        toml::Value::String(s) => out.extend([format!("--{long}"), s.clone()]),
        toml::Value::Integer(n) => out.extend([format!("--{long}"), n.to_string()]),
        toml::Value::Float(x) => out.extend([format!("--{long}"), x.to_string()]),
        toml::Value::Array(items) => {
            for item in items {
                anyhow::ensure!(!matches!(item, toml::Value::Array(_) | toml::Value::Table(_)), "a list holds plain values only");
                push(out, long, item)?;
            }
        }
        toml::Value::Datetime(d) => out.extend([format!("--{long}"), d.to_string()]),
        toml::Value::Table(_) => anyhow::bail!("a table within a command's table is not a flag"),
    }
    Ok(())
}

/// Where the command's name is in `args`: the first word that is neither
/// a global flag nor its value.
fn command_position(args: &[OsString]) -> Option<usize> {
    let cli = command();
    let valued: Vec<String> = cli.get_arguments().filter(|a| a.get_action().takes_values()).filter_map(|a| a.get_long().map(|l| format!("--{l}"))).collect();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if valued.iter().any(|v| *v == a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn expanded(cmdline: &str, toml: &str) -> anyhow::Result<String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custody.toml");
        std::fs::write(&file, toml).unwrap();
        let out = expand(args(cmdline), Some(file.into_os_string()))?;
        Ok(out.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
    }

    #[test]
    fn the_file_becomes_flags_the_command_line_comes_after_and_wins() {
        let toml = "nats = \"nats://hub:4222\"\n[ledger]\ndata = \"/var/lib/custody/ledger\"\ncheckpoint_every = 5\nreplicas = 3\n\
                    [projection]\ndata = \"/p\"\n[up]\nno_demo = true\nexit_after_demo = false\n";
        assert_eq!(
            expanded("custody --nkey k.nk ledger --replicas 1", toml).unwrap(),
            "custody ledger --nats nats://hub:4222 --checkpoint-every 5 --data /var/lib/custody/ledger --replicas 3 --nkey k.nk --replicas 1"
        );
        assert_eq!(expanded("custody up", toml).unwrap(), "custody up --nats nats://hub:4222 --no-demo");
        // The typed value is the one clap keeps.
        let cli = Cli::from_arg_matches(&command().get_matches_from(args(&expanded("custody ledger --replicas 1", toml).unwrap()))).unwrap();
        let super::super::Command::Ledger(_) = cli.command else { panic!("not ledger") };
        assert_eq!(cli.nats.as_deref(), Some("nats://hub:4222"));
    }

    #[test]
    fn a_misspelt_setting_or_command_is_an_error_that_names_it() {
        let e = expanded("custody up", "[ledger]\ncheckpoint_evry = 5\n").unwrap_err();
        assert!(format!("{e:#}").contains("[ledger] checkpoint_evry: `custody ledger` has no flag --checkpoint-evry"), "{e:#}");
        let e = expanded("custody up", "[ledgr]\ndata = \"x\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("custody has no command \"ledgr\""), "{e:#}");
        let e = expanded("custody up", "data = \"x\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("data: not a global flag"), "{e:#}");
    }

    #[test]
    fn without_a_file_nothing_changes_and_the_example_is_valid() {
        assert_eq!(expand(args("custody origin S1 --json"), None).unwrap(), args("custody origin S1 --json"));
        let example = include_str!("../../deploy/custody.toml");
        let flags = flags_of(example).unwrap();
        for command in ["up", "ledger", "projection", "gateway", "authz", "edge"] {
            assert!(flags.commands.iter().any(|(n, f)| n == command && !f.is_empty()), "the example sets {command}");
        }
    }

    #[test]
    fn a_command_that_never_connects_does_not_list_the_connection_flags() {
        let mut cli = command();
        cli.build();
        let help = |cli: &mut clap::Command, name: &str| cli.find_subcommand_mut(name).unwrap().render_long_help().to_string();
        for name in ["keygen", "key", "certs", "verify-certificate"] {
            let text = help(&mut cli, name);
            assert!(!text.contains("--nats") && !text.contains("--nkey") && !text.contains("--context"), "{name}: {text}");
        }
        let text = help(&mut cli, "origin");
        assert!(text.contains("--nats") && text.contains("--nkey") && text.contains("--context"), "{text}");
        assert!(!help(&mut cli, "ledger").contains("--context"));
        // Hidden, not gone: a config file's `nats` still reaches them.
        assert!(Cli::from_arg_matches(&command().get_matches_from(["custody", "keygen", "--out", "k.nk", "--nats", "nats://x:1"])).is_ok());
    }

    #[test]
    fn a_test_switch_is_never_taken_from_a_config_file() {
        let e = expanded("custody ledger", "[ledger]\ntest-clock-file = \"/tmp/clock\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("accepted only on the command line"), "{e:#}");
        let e = expanded("custody ledger", "[ledger]\ntest_clock_file = \"/tmp/clock\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("test switch"), "{e:#}");
    }
}
