//! `--config FILE`: a TOML file whose keys are the long flags (`max-message-size = "4MiB"`,
//! `allowed-origin = ["https://a.example"]`, `room-echo = true`), and `--print-config`.
//!
//! The file is not read into `Config` directly: each key becomes `--key=value` arguments put
//! before the command line's, and clap parses the lot. So every flag, present and future, is
//! a key with the same parser and default, and a flag given on the command line replaces the
//! file's key. Keys are found from clap's own `Command`, never from a list kept here.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::{ArgAction, ArgMatches, Command};

/// Flags that are not settings, and so neither keys of the file nor printed.
const NOT_KEYS: &[&str] = &["config", "print-config", "help", "version"];

/// The key for the arguments after `--` (the `--exec` program's).
const EXEC_ARGS: &str = "exec-args";

/// Keys whose value is masked by `--print-config`.
fn is_secret(key: &str) -> bool {
    ["token", "secret", "password", "key"]
        .iter()
        .any(|s| key.contains(s))
}

/// `argv` with the keys of its `--config FILE` (if any) put before the command line's own
/// arguments; the error names the file and the key.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "--config {}: {}",
            path.display(),
            crate::error::io_message(&e)
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.to_string().trim()))?;
    let mut program = argv.clone();
    program.truncate(1);
    let given = given_longs(&argv);
    let mut from_file = Vec::new();
    let mut exec_args = Vec::new();
    for (key, value) in &table {
        let bad = |msg: String| format!("{}: key `{key}`: {msg}", path.display());
        let long = key.replace('_', "-");
        if long == EXEC_ARGS {
            exec_args = scalars(value).map_err(bad)?;
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !NOT_KEYS.contains(&long.as_str()))
            .ok_or_else(|| bad("unknown key (the keys are the long flags of --help)".into()))?;
        if given.contains(&long) {
            continue; // the command line wins
        }
        let mut args = Vec::new();
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => args.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("must be true or false".into())),
            }
        } else {
            for v in scalars(value).map_err(bad)? {
                args.push(OsString::from(format!("--{long}={v}")));
            }
        }
        // Checked alone, so that a bad value is reported with its key and file.
        let mut alone = program.clone();
        alone.extend(args.iter().cloned());
        if let Err(e) = cmd.clone().try_get_matches_from(alone) {
            return Err(bad(clap_message(&e)));
        }
        from_file.extend(args);
    }
    let mut out = program;
    out.extend(from_file);
    let has_rest = argv.iter().any(|a| a == "--");
    out.extend(argv.into_iter().skip(1));
    if !exec_args.is_empty() && !has_rest {
        out.push("--".into());
        out.extend(exec_args.into_iter().map(OsString::from));
    }
    Ok(out)
}

/// The path after `--config` (or in `--config=PATH`), before any `--`; not for subcommands.
fn config_path(argv: &[OsString]) -> Option<std::path::PathBuf> {
    if argv.get(1).is_some_and(|a| a == "client") {
        return None;
    }
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(Path::new).map(Path::to_path_buf);
        }
        if let Some(p) = a.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(p.into());
        }
    }
    None
}

/// The long flags the command line gives (before `--`).
fn given_longs(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

/// A value as flag values: a string, number or boolean, or an array of them.
fn scalars(value: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("must be a string, number, boolean or a list of them".to_string()),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|s| vec![s]),
    }
}

/// The first line of clap's error, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The effective configuration as TOML, loadable with `--config`: every setting with its
/// value (defaults included), secrets masked, unset ones as comments.
pub fn print(cmd: &Command, matches: &ArgMatches) -> String {
    let mut out = String::from("# the effective wsloop configuration (usable with --config)\n");
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let key = match arg.get_long() {
            Some(long) if !NOT_KEYS.contains(&long) => long.to_string(),
            None if arg.is_last_set() => EXEC_ARGS.to_string(),
            _ => continue,
        };
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vals| {
                vals.map(OsStr::to_string_lossy)
                    .map(|v| v.into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let many = matches!(arg.get_action(), ArgAction::Append) || arg.is_last_set();
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            (values.first().map(String::as_str) == Some("true")).to_string()
        } else if values.is_empty() && !many {
            out.push_str(&format!("# {key} is not set\n"));
            continue;
        } else if is_secret(&key) {
            toml_string("********")
        } else if key == "redis" {
            // The URL may carry the password: mask that part only.
            toml_string(&crate::cluster::url::mask_password(&values[0]))
        } else if many {
            let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
            format!("[{}]", items.join(", "))
        } else if is_toml_integer(&values[0]) {
            values[0].clone()
        } else {
            toml_string(&values[0])
        };
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// A value TOML reads back as the same integer: `0600` (a mode) or `+5` stay strings.
fn is_toml_integer(s: &str) -> bool {
    s.parse::<i64>().is_ok_and(|n| n.to_string() == s)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        config_: crate::Config,
    }

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wsloop-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse(argv: &[&str]) -> Result<Cli, String> {
        use clap::{CommandFactory, FromArgMatches};
        let argv = argv.iter().map(OsString::from).collect();
        let args = expand(&Cli::command(), argv)?;
        let m = Cli::command()
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_are_the_long_flags_and_the_command_line_wins() {
        let path = file(
            "ok.toml",
            "port = 9100\nmax_message_size = \"4MiB\"\nroom-echo = true\n\
             allowed-origin = [\"https://a.example\", \"null\"]\npublish-token = \"s3cret\"\n\
             exec = \"/bin/cat\"\nexec-args = [\"-u\"]\n",
        );
        let p = path.to_str().unwrap();
        let c = parse(&["wsloop", "--config", p]).unwrap().config_;
        assert_eq!(c.port, 9100);
        assert_eq!(c.max_message_size, 4 << 20);
        assert!(c.room_echo);
        assert_eq!(c.allowed_origins, ["https://a.example", "null"]);
        assert_eq!(c.exec_args, ["-u"]);
        let c = parse(&[
            "wsloop",
            "--port=9200",
            "--config",
            p,
            "--allowed-origin",
            "*",
        ])
        .unwrap()
        .config_;
        assert_eq!(c.port, 9200);
        assert_eq!(c.allowed_origins, ["*"]);
        assert_eq!(c.max_message_size, 4 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        for (text, key) in [
            ("prot = 1\n", "prot"),
            ("max-message-size = \"lots\"\n", "max-message-size"),
            ("room-echo = \"yes\"\n", "room-echo"),
            ("port = { a = 1 }\n", "port"),
            ("config = \"x.toml\"\n", "config"),
        ] {
            let path = file("bad.toml", text);
            let err = parse(&["wsloop", "--config", path.to_str().unwrap()])
                .err()
                .unwrap();
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            assert!(err.contains(&format!("key `{key}`")), "{err}");
        }
        let path = file("syntax.toml", "port = \n");
        let err = parse(&["wsloop", "--config", path.to_str().unwrap()])
            .err()
            .unwrap();
        assert!(err.starts_with(path.to_str().unwrap()), "{err}");
        assert!(parse(&["wsloop", "--config", "/nonexistent.toml"])
            .err()
            .unwrap()
            .starts_with("--config /nonexistent.toml"));
    }

    #[test]
    fn printed_configuration_loads_back_the_same_with_secrets_masked() {
        use clap::CommandFactory;
        let path = file(
            "print.toml",
            "port = 9300\nallowed-origin = [\"https://a.example\"]\npublish-token = \"s3cret\"\n\
             room-events = true\npush-every = \"2s\"\nbind = \"unix:/run/w.sock\"\n\
             unix-mode = \"0600\"\n",
        );
        let argv = ["wsloop", "--config", path.to_str().unwrap()].map(OsString::from);
        let args = expand(&Cli::command(), argv.to_vec()).unwrap();
        let m = Cli::command().get_matches_from(args);
        let printed = print(&Cli::command(), &m);
        assert!(printed.contains("\nport = 9300\n"), "{printed}");
        assert!(
            printed.contains("\nmax-message-size = \"16MiB\"\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\nallowed-origin = [\"https://a.example\"]\n"),
            "{printed}"
        );
        assert!(
            printed.contains("\npublish-token = \"********\"\n"),
            "{printed}"
        );
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("\n# push-room is not set\n"), "{printed}");
        assert!(!printed.contains("print-config"), "{printed}");
        // Not a TOML integer (leading zero): kept as a string.
        assert!(printed.contains("\nunix-mode = \"0600\"\n"), "{printed}");
        // Loaded back (the token aside), it is the same configuration.
        let again = file("again.toml", &printed.replace("\"********\"", "\"t\""));
        let c = parse(&["wsloop", "--config", again.to_str().unwrap()])
            .unwrap()
            .config_;
        assert_eq!(c.port, 9300);
        assert!(c.room_events);
        assert_eq!(c.push_every, Some(std::time::Duration::from_secs(2)));
        assert_eq!(c.publish_token.as_deref(), Some("t"));
        assert_eq!(c.bind, crate::socket::BindAddr::Unix("/run/w.sock".into()));
        assert_eq!(c.unix_mode, 0o600);
    }

    #[test]
    fn printed_redis_url_hides_its_password() {
        use clap::CommandFactory;
        let argv = ["wsloop", "--redis", "redis://alice:s3cret@10.0.0.5:7000/2"];
        let m = Cli::command().get_matches_from(argv);
        let printed = print(&Cli::command(), &m);
        assert!(
            printed.contains("\nredis = \"redis://alice:********@10.0.0.5:7000/2\"\n"),
            "{printed}"
        );
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
