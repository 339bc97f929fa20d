//! Shell command lines reduced to the simple commands they run, so that
//! `exec`'s approval rules see words, not text.
//!
//! An `[[tools.exec_approval]]` rule is a regular expression. Searched in
//! the raw command line it is trivially dodged: `t''ouch pwned`,
//! `/usr/bin/touch pwned`, `true; touch pwned` and `sh -c 'touch pwned'`
//! all run `touch pwned` while the text never contains it. This module
//! exists to turn a command line into what the shell will actually run,
//! one simple command at a time, so a pattern is matched against that:
//! the line is split at `;`, `&&`, `||`, `|`, `&`, `(`, `)` and newlines
//! outside quotes (`echo "a;b"` stays one command), each word has its
//! quotes and escapes removed, and the program loses its path prefix
//! (`/usr/bin/touch` is `touch`). A rule then sees the words joined by
//! single spaces, so `^dropdb` still means "the program is dropdb".
//!
//! What cannot be reduced to plain words is refused instead of guessed:
//! command substitution, `eval`, `sh -c`, a pipe into a shell,
//! here-documents, a variable or a glob as the program, and the like
//! ([`Irreducible`]). `exec` escalates such a command whenever any rule
//! exists, because whatever it runs is invisible to the rules.
//!
//! Wrappers that run their arguments as a command (`sudo`, `env`,
//! `nohup`, `timeout`, `nice`, `exec`, `command`, `builtin`, `time`,
//! `setsid`, `stdbuf`, `doas`, `busybox`) are looked through: the wrapped
//! command is matched too, so `^dropdb` catches `sudo -u pg dropdb x`. An
//! option of a wrapper this module does not know is refused, because it
//! cannot tell where the wrapped command starts. `xargs` is refused: its
//! command's arguments come from its input.
//!
//! This is a tripwire for mistakes, not a security boundary: arguments
//! that are expansions (`touch $f`) are matched as written, and other
//! interpreters (`python -c`, `find -exec`, `awk 'BEGIN{system(..)}'`) are
//! only words to it. The sandbox `exec` runs in is the boundary.
//!
//! Structure (operators, comments, substitutions, redirections) is found by
//! a small scanner here, because word splitters do not report it; each word
//! is then unquoted by the `shlex` crate, and a word the two read
//! differently is refused as unparseable quoting.

/// Why a command line cannot be reduced to plain words. Its text is the
/// reason shown when `exec` escalates the command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Irreducible {
    /// `$(...)` or backticks: the command runs another command's output.
    #[error("command substitution")]
    CommandSubstitution,
    /// `$((...))`: bash evaluates array subscripts in it, commands
    /// included.
    #[error("arithmetic expansion")]
    ArithmeticExpansion,
    /// `<(...)` or `>(...)`.
    #[error("process substitution")]
    ProcessSubstitution,
    /// `$'...'`, whose escapes (`\x74`) spell any text.
    #[error("ANSI-C quoting ($'...')")]
    AnsiCQuoting,
    /// `<<` or `<<<`: text fed to the command, perhaps a shell.
    #[error("here-document")]
    HereDocument,
    /// `eval` runs its arguments as a command line.
    #[error("eval")]
    Eval,
    /// `trap` runs a string as a command line when a signal arrives.
    #[error("trap (a string run as a command)")]
    Trap,
    /// `alias` can rename any command for the lines after it.
    #[error("alias")]
    Alias,
    /// A shell given a command line with `-c` (or `su -c`).
    #[error("sh -c (`{0} -c`)")]
    ShellCommand(String),
    /// A shell reading its commands from a pipe.
    #[error("pipe into a shell (`| {0}`)")]
    PipeIntoShell(String),
    /// The program is `$VAR` or `${VAR}` (or contains one).
    #[error("variable in program position")]
    VariableProgram,
    /// The program is a glob (`/usr/bin/tou?h`) or, for bash, a brace
    /// expansion (`{touch,x}`).
    #[error("glob in program position")]
    GlobProgram,
    /// Wrappers nested deeper than [`MAX_WRAPPERS`].
    #[error("more than {MAX_WRAPPERS} nested wrappers")]
    TooManyWrappers,
    /// `xargs` builds its command's arguments from its input.
    #[error("xargs (arguments from input)")]
    Xargs,
    /// `env -S` splits a string into a command line.
    #[error("env -S (a string split into a command)")]
    EnvSplitString,
    /// A wrapper's option this module does not know, so it cannot tell
    /// where the wrapped command starts.
    #[error("option `{option}` of `{wrapper}` not understood")]
    WrapperOption {
        /// The wrapper (`sudo`).
        wrapper: String,
        /// The option (`--frobnicate`).
        option: String,
    },
    /// Quotes or escapes that do not close, or a word the scanner and
    /// the word splitter read differently.
    #[error("unparseable quoting: {0}")]
    Quoting(&'static str),
    /// A redirection with no target.
    #[error("unparseable redirection: {0}")]
    Redirection(&'static str),
}

/// How many wrappers (`sudo nohup env ...`) one simple command may nest;
/// more is refused rather than looked through.
pub const MAX_WRAPPERS: usize = 8;

/// One simple command of a command line: its words with quotes and
/// escapes removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimpleCommand {
    /// The program (its path prefix stripped) and its arguments. Leading
    /// `NAME=value` assignments and reserved words (`if`, `then`, `{`,
    /// `!`, ...) are not part of it. Empty for a command that is only
    /// assignments or redirections.
    pub words: Vec<String>,
    /// The redirections with their targets (`>out`, `2>&1`), in order.
    pub redirections: Vec<String>,
    /// The commands that wrappers in it run, outermost first: for
    /// `sudo nohup /usr/bin/dropdb x`, `["nohup", "dropdb", "x"]` and
    /// `["dropdb", "x"]`.
    pub wrapped: Vec<Vec<String>>,
    /// Whether its standard input is the previous command of a pipeline.
    pub piped: bool,
}

impl SimpleCommand {
    /// The texts approval rules are matched against: the words joined by
    /// single spaces, followed by the redirections, and the same for each
    /// wrapped command. A rule that matches any of them matches the
    /// command.
    pub fn match_texts(&self) -> Vec<String> {
        let join = |words: &[String]| {
            words
                .iter()
                .chain(&self.redirections)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        };
        std::iter::once(join(&self.words))
            .chain(self.wrapped.iter().map(|w| join(w)))
            .collect()
    }
}

/// Reduces a command line (as given to `sh -c`) to its simple commands, in
/// order.
///
/// # Errors
///
/// [`Irreducible`] when what the line runs cannot be told from its words.
pub fn simple_commands(line: &str) -> Result<Vec<SimpleCommand>, Irreducible> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    let mut redirections = Vec::new();
    let mut pending: Option<String> = None;
    let mut piped = false;
    for token in scan(line)? {
        match token {
            Token::Word(word) => match pending.take() {
                Some(op) => redirections.push(format!("{op}{}", unquote(&word.raw)?)),
                None => words.push(word),
            },
            Token::Redirect(op) => {
                if pending.replace(op).is_some() {
                    return Err(Irreducible::Redirection("two operators in a row"));
                }
            }
            Token::Separator | Token::Pipe => {
                if pending.is_some() {
                    return Err(Irreducible::Redirection("no target before an operator"));
                }
                let words = std::mem::take(&mut words);
                let redirections = std::mem::take(&mut redirections);
                if let Some(command) = simple_command(words, redirections, piped)? {
                    commands.push(command);
                }
                piped = matches!(token, Token::Pipe);
            }
        }
    }
    if pending.is_some() {
        return Err(Irreducible::Redirection("no target at the end"));
    }
    if let Some(command) = simple_command(words, redirections, piped)? {
        commands.push(command);
    }
    Ok(commands)
}

/// A word as the scanner saw it: its raw text (quotes included) and what
/// its unquoted parts hold.
#[derive(Debug, Clone, Default)]
struct RawWord {
    raw: String,
    /// A `$` expansion outside single quotes.
    dollar: bool,
    /// The unquoted pattern characters (`*`, `?`, `[`, `]`, `{`, `}`), in
    /// order.
    globs: String,
}

impl RawWord {
    /// Whether the shell may expand the word into other words: `*`, `?`,
    /// a bracket expression, or (bash) a brace expansion.
    fn is_glob(&self) -> bool {
        let pair = |open: char, close: char| {
            self.globs
                .find(open)
                .is_some_and(|at| self.globs.get(at..).is_some_and(|s| s.contains(close)))
        };
        self.globs.contains(['*', '?']) || pair('[', ']') || pair('{', '}')
    }
}

#[derive(Debug)]
enum Token {
    Word(RawWord),
    /// `;`, `&`, `&&`, `||`, `(`, `)` or a newline.
    Separator,
    /// `|` or `|&`.
    Pipe,
    /// A redirection operator with its file descriptor (`2>`, `>>`, `>&`).
    Redirect(String),
}

/// Splits a line into words and operators, honouring quotes, escapes and
/// comments as a POSIX shell does, and refuses the constructs that hide
/// what runs.
fn scan(line: &str) -> Result<Vec<Token>, Irreducible> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut word: Option<RawWord> = None;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' => {
                flush(&mut tokens, &mut word);
                i += 1;
            }
            '\n' => {
                flush(&mut tokens, &mut word);
                tokens.push(Token::Separator);
                i += 1;
            }
            '#' if word.is_none() => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
            }
            '\\' => match next {
                // A line continuation disappears before words are formed.
                Some('\n') => i += 2,
                Some(escaped) => {
                    let w = word.get_or_insert_with(RawWord::default);
                    w.raw.push('\\');
                    w.raw.push(escaped);
                    i += 2;
                }
                None => return Err(Irreducible::Quoting("a backslash ends the line")),
            },
            '\'' => {
                let w = word.get_or_insert_with(RawWord::default);
                let close = find(&chars, i + 1, '\'')
                    .ok_or(Irreducible::Quoting("a single quote is not closed"))?;
                w.raw.extend(chars.get(i..=close).unwrap_or_default());
                i = close + 1;
            }
            '"' => {
                let w = word.get_or_insert_with(RawWord::default);
                w.raw.push('"');
                i = double_quoted(&chars, i + 1, w)?;
            }
            '`' => return Err(Irreducible::CommandSubstitution),
            '$' => {
                let w = word.get_or_insert_with(RawWord::default);
                i = dollar(&chars, i, w)?;
            }
            ';' | '&' | '(' | ')' => {
                flush(&mut tokens, &mut word);
                tokens.push(Token::Separator);
                // `;;`, `&&` are one operator; two separators mean the same.
                i += if matches!((c, next), (';', Some(';')) | ('&', Some('&'))) {
                    2
                } else {
                    1
                };
            }
            '|' => {
                flush(&mut tokens, &mut word);
                match next {
                    Some('|') => tokens.push(Token::Separator),
                    _ => tokens.push(Token::Pipe),
                }
                i += if matches!(next, Some('|' | '&')) {
                    2
                } else {
                    1
                };
            }
            '<' | '>' => {
                // Digits right before the operator name a file descriptor.
                let fd = match word.take() {
                    Some(w) if !w.raw.is_empty() && w.raw.chars().all(|c| c.is_ascii_digit()) => {
                        w.raw
                    }
                    other => {
                        word = other;
                        flush(&mut tokens, &mut word);
                        String::new()
                    }
                };
                let (op, len) = match (c, next) {
                    ('<', Some('<')) => return Err(Irreducible::HereDocument),
                    (_, Some('(')) => return Err(Irreducible::ProcessSubstitution),
                    ('<', Some('&')) => ("<&", 2),
                    ('<', Some('>')) => ("<>", 2),
                    ('>', Some('>')) => (">>", 2),
                    ('>', Some('&')) => (">&", 2),
                    ('>', Some('|')) => (">|", 2),
                    ('<', _) => ("<", 1),
                    _ => (">", 1),
                };
                tokens.push(Token::Redirect(format!("{fd}{op}")));
                i += len;
            }
            '*' | '?' | '[' | ']' | '{' | '}' => {
                let w = word.get_or_insert_with(RawWord::default);
                w.raw.push(c);
                w.globs.push(c);
                i += 1;
            }
            _ => {
                word.get_or_insert_with(RawWord::default).raw.push(c);
                i += 1;
            }
        }
    }
    flush(&mut tokens, &mut word);
    Ok(tokens)
}

fn flush(tokens: &mut Vec<Token>, word: &mut Option<RawWord>) {
    if let Some(w) = word.take() {
        tokens.push(Token::Word(w));
    }
}

/// The index of the first `target` at or after `from`.
fn find(chars: &[char], from: usize, target: char) -> Option<usize> {
    chars
        .get(from..)?
        .iter()
        .position(|&c| c == target)
        .map(|p| p + from)
}

/// Reads the inside of a double-quoted string starting at `i` (after the
/// opening quote) into `w`, returning the index after the closing quote.
fn double_quoted(chars: &[char], mut i: usize, w: &mut RawWord) -> Result<usize, Irreducible> {
    loop {
        match chars.get(i).copied() {
            None => return Err(Irreducible::Quoting("a double quote is not closed")),
            Some('"') => {
                w.raw.push('"');
                return Ok(i + 1);
            }
            Some('\\') => {
                let escaped = chars
                    .get(i + 1)
                    .copied()
                    .ok_or(Irreducible::Quoting("a double quote is not closed"))?;
                w.raw.push('\\');
                w.raw.push(escaped);
                i += 2;
            }
            Some('`') => return Err(Irreducible::CommandSubstitution),
            Some('$') => i = dollar(chars, i, w)?,
            Some(c) => {
                w.raw.push(c);
                i += 1;
            }
        }
    }
}

/// Reads an expansion starting with the `$` at `i` into `w`, returning the
/// index after it; refuses substitutions.
fn dollar(chars: &[char], i: usize, w: &mut RawWord) -> Result<usize, Irreducible> {
    match chars.get(i + 1).copied() {
        Some('(') if chars.get(i + 2) == Some(&'(') => Err(Irreducible::ArithmeticExpansion),
        Some('(') => Err(Irreducible::CommandSubstitution),
        Some('\'') => Err(Irreducible::AnsiCQuoting),
        Some('{') => {
            // `${...}`: up to the matching brace, where a substitution
            // would still run.
            let mut depth = 0usize;
            let mut j = i + 1;
            loop {
                match chars.get(j).copied() {
                    None => return Err(Irreducible::Quoting("a `${` is not closed")),
                    Some('`') => return Err(Irreducible::CommandSubstitution),
                    Some('$') if chars.get(j + 1) == Some(&'(') => {
                        return Err(Irreducible::CommandSubstitution);
                    }
                    Some('\\') => j += 1,
                    Some('{') => depth += 1,
                    Some('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Some(_) => {}
                }
                j += 1;
            }
            w.raw.extend(chars.get(i..=j).unwrap_or_default());
            w.dollar = true;
            Ok(j + 1)
        }
        Some(c) if c.is_ascii_alphanumeric() || "_@*#?$!-".contains(c) => {
            w.raw.push('$');
            w.dollar = true;
            Ok(i + 1)
        }
        // A lone `$` is a literal dollar sign.
        _ => {
            w.raw.push('$');
            Ok(i + 1)
        }
    }
}

/// Removes a word's quotes and escapes with `shlex`, which must read it as
/// exactly one word.
fn unquote(raw: &str) -> Result<String, Irreducible> {
    match shlex::split(raw) {
        Some(mut words) if words.len() == 1 => Ok(words.remove(0)),
        _ => Err(Irreducible::Quoting(
            "a word the splitter reads differently",
        )),
    }
}

/// A word with quotes removed, and what its raw form said.
struct Word {
    text: String,
    dollar: bool,
    glob: bool,
}

/// Words that only start a compound command or end one; the command
/// proper follows them.
const RESERVED: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "esac",
];

/// Shells: with `-c` they run a string, without a script they run their
/// input.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "oksh", "pdksh", "ash", "yash",
    "posh", "rbash", "fish", "csh", "tcsh",
];

fn simple_command(
    raw: Vec<RawWord>,
    redirections: Vec<String>,
    piped: bool,
) -> Result<Option<SimpleCommand>, Irreducible> {
    let mut words = Vec::with_capacity(raw.len());
    let mut leading = true;
    for w in raw {
        if leading && (RESERVED.contains(&w.raw.as_str()) || is_assignment(&w.raw)) {
            continue;
        }
        leading = false;
        words.push(Word {
            text: unquote(&w.raw)?,
            dollar: w.dollar,
            glob: w.is_glob(),
        });
    }
    if words.is_empty() && redirections.is_empty() {
        return Ok(None);
    }
    let mut wrapped = Vec::new();
    let mut rest: &[Word] = &words;
    let mut first = true;
    while let Some(program) = rest.first() {
        if wrapped.len() > MAX_WRAPPERS {
            return Err(Irreducible::TooManyWrappers);
        }
        if program.dollar {
            return Err(Irreducible::VariableProgram);
        }
        if program.glob {
            return Err(Irreducible::GlobProgram);
        }
        if !first {
            wrapped.push(
                rest.iter()
                    .enumerate()
                    .map(|(i, w)| {
                        if i == 0 {
                            basename(&w.text)
                        } else {
                            w.text.clone()
                        }
                    })
                    .collect(),
            );
        }
        first = false;
        let name = basename(&program.text);
        let args = rest.get(1..).unwrap_or_default();
        rest = match name.as_str() {
            "eval" => return Err(Irreducible::Eval),
            // `trap ACTION SIGNAL...`; `trap - SIG` and `trap '' SIG` run nothing.
            "trap"
                if args.len() > 1
                    && args
                        .first()
                        .is_some_and(|a| !matches!(a.text.as_str(), "" | "-")) =>
            {
                return Err(Irreducible::Trap);
            }
            "alias" => return Err(Irreducible::Alias),
            "xargs" => return Err(Irreducible::Xargs),
            "su" | "runuser" => {
                if args.iter().any(|a| is_command_option(&a.text)) {
                    return Err(Irreducible::ShellCommand(name));
                }
                &[]
            }
            shell if SHELLS.contains(&shell) => {
                check_shell(&name, args, piped)?;
                &[]
            }
            _ => match wrapper(&name) {
                Some(spec) => spec.command(args)?,
                None => &[],
            },
        };
    }
    let mut words: Vec<String> = words.into_iter().map(|w| w.text).collect();
    if let Some(program) = words.first_mut() {
        *program = basename(program);
    }
    Ok(Some(SimpleCommand {
        words,
        redirections,
        wrapped,
        piped,
    }))
}

/// `NAME=value` before the program.
fn is_assignment(raw: &str) -> bool {
    let Some((name, _)) = raw.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The program's name without its directory.
fn basename(program: &str) -> String {
    program.rsplit('/').next().unwrap_or(program).to_owned()
}

/// `-c`, or an option cluster holding `c` (`-ec`), or `--command`.
fn is_command_option(arg: &str) -> bool {
    arg.starts_with("--command")
        || (arg.starts_with('-') && !arg.starts_with("--") && arg.contains('c'))
}

/// Refuses a shell that runs a string or its piped input. A `-c`
/// anywhere counts, even after a script's name: refusing too much is safe.
fn check_shell(name: &str, args: &[Word], piped: bool) -> Result<(), Irreducible> {
    if args.iter().any(|a| is_command_option(&a.text)) {
        return Err(Irreducible::ShellCommand(name.to_owned()));
    }
    let mut reads_input = true;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let a = arg.text.as_str();
        if a == "--" || a == "-" {
            reads_input = args.get(i + 1).is_none();
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            if matches!(long, "rcfile" | "init-file") {
                i += 1;
            }
        } else if let Some(cluster) = a.strip_prefix(['-', '+']) {
            if a.starts_with('-') && cluster.contains('s') {
                // `-s`: commands from the input even with arguments.
                reads_input = true;
                break;
            }
            // `-o pipefail`, `-O extglob`: the option takes the next word.
            if cluster.contains(['o', 'O']) {
                i += 1;
            }
        } else {
            // A script file: its text is not on the command line.
            reads_input = false;
            break;
        }
        i += 1;
    }
    if piped && reads_input {
        return Err(Irreducible::PipeIntoShell(name.to_owned()));
    }
    Ok(())
}

/// How a wrapper's own options look, so the wrapped command can be found.
struct Wrapper {
    name: &'static str,
    /// Short options without an argument.
    flags: &'static str,
    /// Short options with an argument (`-u root` or `-uroot`).
    with_arg: &'static str,
    /// Long options without an argument.
    long_flags: &'static [&'static str],
    /// Long options with an argument (`--user root` or `--user=root`).
    long_with_arg: &'static [&'static str],
    /// Arguments between the options and the command (`timeout`'s
    /// duration).
    operands: usize,
}

const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        name: "sudo",
        flags: "AbBEeHiKklNnPSsVv",
        with_arg: "CDghpRrTtUu",
        long_flags: &[
            "askpass",
            "background",
            "bell",
            "preserve-env",
            "edit",
            "set-home",
            "login",
            "remove-timestamp",
            "reset-timestamp",
            "list",
            "non-interactive",
            "preserve-groups",
            "stdin",
            "shell",
            "version",
            "validate",
        ],
        long_with_arg: &[
            "close-from",
            "chdir",
            "group",
            "host",
            "prompt",
            "chroot",
            "role",
            "type",
            "command-timeout",
            "other-user",
            "user",
        ],
        operands: 0,
    },
    Wrapper {
        name: "doas",
        flags: "nsL",
        with_arg: "uC",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "env",
        flags: "i0v",
        with_arg: "uC",
        long_flags: &["ignore-environment", "null", "debug"],
        long_with_arg: &["unset", "chdir"],
        operands: 0,
    },
    Wrapper {
        name: "nohup",
        flags: "",
        with_arg: "",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "builtin",
        flags: "",
        with_arg: "",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "command",
        flags: "pvV",
        with_arg: "",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "exec",
        flags: "cl",
        with_arg: "a",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "nice",
        flags: "",
        with_arg: "n",
        long_flags: &[],
        long_with_arg: &["adjustment"],
        operands: 0,
    },
    Wrapper {
        name: "timeout",
        flags: "v",
        with_arg: "sk",
        long_flags: &["preserve-status", "foreground", "verbose"],
        long_with_arg: &["signal", "kill-after"],
        operands: 1,
    },
    Wrapper {
        name: "time",
        flags: "pavq",
        with_arg: "fo",
        long_flags: &["portability", "append", "verbose", "quiet"],
        long_with_arg: &["format", "output"],
        operands: 0,
    },
    Wrapper {
        name: "setsid",
        flags: "cfw",
        with_arg: "",
        long_flags: &["ctty", "fork", "wait"],
        long_with_arg: &[],
        operands: 0,
    },
    Wrapper {
        name: "stdbuf",
        flags: "",
        with_arg: "ioe",
        long_flags: &[],
        long_with_arg: &["input", "output", "error"],
        operands: 0,
    },
    Wrapper {
        name: "busybox",
        flags: "",
        with_arg: "",
        long_flags: &[],
        long_with_arg: &[],
        operands: 0,
    },
];

fn wrapper(name: &str) -> Option<&'static Wrapper> {
    WRAPPERS.iter().find(|w| w.name == name)
}

impl Wrapper {
    /// The wrapped command: what follows the options, the operands and
    /// (for `env`) the assignments. Empty when there is none.
    fn command<'a>(&self, args: &'a [Word]) -> Result<&'a [Word], Irreducible> {
        let refuse = |option: &str| Irreducible::WrapperOption {
            wrapper: self.name.to_owned(),
            option: option.to_owned(),
        };
        let mut i = 0;
        while let Some(arg) = args.get(i) {
            let a = arg.text.as_str();
            if a == "--" {
                i += 1;
                break;
            }
            if self.name == "env" && (a == "-S" || a.starts_with("--split-string")) {
                return Err(Irreducible::EnvSplitString);
            }
            if self.name == "env" && a == "-" {
                i += 1;
                continue;
            }
            if let Some(long) = a.strip_prefix("--") {
                let name = long.split_once('=').map_or(long, |(n, _)| n);
                if self.long_with_arg.contains(&name) {
                    i += usize::from(!long.contains('='));
                } else if !self.long_flags.contains(&name) {
                    return Err(refuse(a));
                }
            } else if let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) {
                if self.name == "nice" && cluster.chars().all(|c| c.is_ascii_digit()) {
                    i += 1;
                    continue;
                }
                if self.name == "env" && cluster.starts_with('S') {
                    return Err(Irreducible::EnvSplitString);
                }
                for (at, c) in cluster.char_indices() {
                    if self.with_arg.contains(c) {
                        // The rest of the cluster is the argument, or the
                        // next word is.
                        i += usize::from(at + c.len_utf8() == cluster.len());
                        break;
                    }
                    if !self.flags.contains(c) {
                        return Err(refuse(a));
                    }
                }
            } else {
                break;
            }
            i += 1;
        }
        i += self.operands;
        if matches!(self.name, "env" | "sudo") {
            while args.get(i).is_some_and(|a| is_assignment(&a.text)) {
                i += 1;
            }
        }
        Ok(args.get(i..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The match texts of every simple command, in order.
    fn texts(line: &str) -> Vec<String> {
        simple_commands(line)
            .unwrap_or_else(|e| panic!("{line:?} was refused: {e}"))
            .iter()
            .flat_map(SimpleCommand::match_texts)
            .collect()
    }

    fn refused(line: &str) -> Irreducible {
        match simple_commands(line) {
            Err(e) => e,
            Ok(commands) => panic!("{line:?} was reduced to {commands:?}"),
        }
    }

    #[test]
    fn plain_words_are_unquoted_split_and_stripped_of_paths() {
        let table: &[(&str, &[&str])] = &[
            ("touch pwned", &["touch pwned"]),
            ("  touch   pwned  ", &["touch pwned"]),
            ("t''ouch pwned", &["touch pwned"]),
            (r"t\ouch pwned", &["touch pwned"]),
            (r#""touch" pwned"#, &["touch pwned"]),
            ("'touch' 'pwned'", &["touch pwned"]),
            ("/usr/bin/touch pwned", &["touch pwned"]),
            ("./dropdb production", &["dropdb production"]),
            ("~/bin/dropdb x", &["dropdb x"]),
            ("tou\\\nch pwned", &["touch pwned"]),
            ("touch \\\n pwned", &["touch pwned"]),
            (r#"echo "a;b""#, &["echo a;b"]),
            (r#"echo "touch pwned""#, &["echo touch pwned"]),
            (r#"echo 'a && b | c'"#, &["echo a && b | c"]),
            (r#"echo "it's""#, &["echo it's"]),
            (r#"echo "a\"b""#, &[r#"echo a"b"#]),
            (r"echo \;", &["echo ;"]),
            (r#"echo "$HOME""#, &["echo $HOME"]),
            ("echo ${HOME}/x", &["echo ${HOME}/x"]),
            ("echo 5$", &["echo 5$"]),
            ("echo a#b", &["echo a#b"]),
            ("[ -f x ]", &["[ -f x ]"]),
            ("{ echo; }", &["echo"]),
            ("echo {a,b} '{x,y}'", &["echo {a,b} {x,y}"]),
            ("trap - EXIT", &["trap - EXIT"]),
        ];
        for (line, want) in table {
            assert_eq!(texts(line), *want, "{line:?}");
        }
    }

    #[test]
    fn lists_and_pipelines_split_into_simple_commands() {
        let table: &[(&str, &[&str])] = &[
            ("true; touch pwned", &["true", "touch pwned"]),
            ("true;touch pwned", &["true", "touch pwned"]),
            ("true && touch pwned", &["true", "touch pwned"]),
            ("false || touch pwned", &["false", "touch pwned"]),
            ("ls | grep x", &["ls", "grep x"]),
            ("ls |& grep x", &["ls", "grep x"]),
            ("sleep 1 & touch pwned", &["sleep 1", "touch pwned"]),
            ("(touch pwned)", &["touch pwned"]),
            (
                "(cd a && touch pwned) | cat",
                &["cd a", "touch pwned", "cat"],
            ),
            ("{ touch pwned; }", &["touch pwned"]),
            ("echo hi\ntouch pwned", &["echo hi", "touch pwned"]),
            ("if true; then touch pwned; fi", &["true", "touch pwned"]),
            (
                "while false; do touch pwned; done",
                &["false", "touch pwned"],
            ),
            ("! touch pwned", &["touch pwned"]),
            ("f() { touch pwned; }; f", &["f", "touch pwned", "f"]),
            (
                "case x in x) touch pwned;; esac",
                &["case x in x", "touch pwned"],
            ),
        ];
        for (line, want) in table {
            assert_eq!(texts(line), *want, "{line:?}");
        }
    }

    #[test]
    fn comments_end_at_the_newline() {
        assert_eq!(texts("echo hi # touch pwned"), ["echo hi"]);
        // A quote inside a comment opens nothing.
        assert_eq!(
            texts("echo hi # it's\ntouch pwned"),
            ["echo hi", "touch pwned"]
        );
        assert_eq!(texts("# only a comment"), Vec::<String>::new());
    }

    #[test]
    fn assignments_and_redirections_leave_the_program_first() {
        let table: &[(&str, &[&str])] = &[
            ("PGHOST=x dropdb db", &["dropdb db"]),
            ("A=1 B='2 3' /usr/bin/dropdb db", &["dropdb db"]),
            (">x touch pwned", &["touch pwned >x"]),
            ("2>/dev/null touch pwned", &["touch pwned 2>/dev/null"]),
            ("touch>x pwned", &["touch pwned >x"]),
            ("make 2>&1 >log", &["make 2>&1 >log"]),
            ("cat < in >> out", &["cat <in >>out"]),
            ("echo hi >| f", &["echo hi >|f"]),
            ("X=1", &[]),
            (">empty", &[">empty"]),
        ];
        for (line, want) in table {
            assert_eq!(texts(line), *want, "{line:?}");
        }
    }

    #[test]
    fn wrappers_are_looked_through() {
        let table: &[(&str, &[&str])] = &[
            ("sudo dropdb x", &["sudo dropdb x", "dropdb x"]),
            (
                "sudo -u postgres -E /usr/bin/dropdb x",
                &["sudo -u postgres -E /usr/bin/dropdb x", "dropdb x"],
            ),
            (
                "sudo -upostgres dropdb x",
                &["sudo -upostgres dropdb x", "dropdb x"],
            ),
            (
                "sudo --user=pg dropdb x",
                &["sudo --user=pg dropdb x", "dropdb x"],
            ),
            (
                "env -i A=1 touch pwned",
                &["env -i A=1 touch pwned", "touch pwned"],
            ),
            ("nohup touch pwned", &["nohup touch pwned", "touch pwned"]),
            (
                "timeout -s KILL 5 touch pwned",
                &["timeout -s KILL 5 touch pwned", "touch pwned"],
            ),
            (
                "nice -n 5 touch pwned",
                &["nice -n 5 touch pwned", "touch pwned"],
            ),
            (
                "nice -10 touch pwned",
                &["nice -10 touch pwned", "touch pwned"],
            ),
            ("exec touch pwned", &["exec touch pwned", "touch pwned"]),
            (
                "command -p touch pwned",
                &["command -p touch pwned", "touch pwned"],
            ),
            (
                "sudo nohup touch pwned",
                &["sudo nohup touch pwned", "nohup touch pwned", "touch pwned"],
            ),
            ("exec >log", &["exec >log"]),
            (
                "sudo PGHOST=h dropdb x",
                &["sudo PGHOST=h dropdb x", "dropdb x"],
            ),
            ("env", &["env"]),
            ("time -p make", &["time -p make", "make"]),
        ];
        for (line, want) in table {
            assert_eq!(texts(line), *want, "{line:?}");
        }
    }

    #[test]
    fn what_hides_the_command_is_refused() {
        use Irreducible as I;
        let shell = |s: &str| I::ShellCommand(s.into());
        let pipe = |s: &str| I::PipeIntoShell(s.into());
        let deep = format!("{}touch pwned", "nohup ".repeat(MAX_WRAPPERS + 2));
        let table: Vec<(&str, Irreducible)> = vec![
            ("$(echo touch) pwned", I::CommandSubstitution),
            ("`echo touch` pwned", I::CommandSubstitution),
            (r#"echo "$(touch pwned)""#, I::CommandSubstitution),
            ("echo \"`touch pwned`\"", I::CommandSubstitution),
            ("echo ${x:-$(touch pwned)}", I::CommandSubstitution),
            ("echo $((1 + 2))", I::ArithmeticExpansion),
            ("diff <(ls a) <(ls b)", I::ProcessSubstitution),
            ("tee >(sh)", I::ProcessSubstitution),
            (r"$'\x74ouch' pwned", I::AnsiCQuoting),
            ("echo dG91Y2ggcHduZWQ= | base64 -d | sh", pipe("sh")),
            ("curl x | bash", pipe("bash")),
            ("curl x | /bin/sh", pipe("sh")),
            ("curl x | sudo sh", pipe("sh")),
            ("curl x | env sh", pipe("sh")),
            ("curl x | sh -s -- arg", pipe("sh")),
            ("curl x | sh -", pipe("sh")),
            ("sh -c 'touch pwned'", shell("sh")),
            ("bash -c 'touch pwned'", shell("bash")),
            ("dash -ec 'touch pwned'", shell("dash")),
            ("zsh -c 'touch pwned'", shell("zsh")),
            ("/bin/sh -c 'touch pwned'", shell("sh")),
            ("env sh -c 'touch pwned'", shell("sh")),
            ("sudo -u x bash -lc 'touch pwned'", shell("bash")),
            ("busybox sh -c 'touch pwned'", shell("sh")),
            ("su -c 'touch pwned' root", shell("su")),
            ("eval 'touch pwned'", I::Eval),
            ("true && eval x", I::Eval),
            ("alias t=touch", I::Alias),
            ("cat <<EOF\ntouch pwned\nEOF", I::HereDocument),
            ("sh <<< 'touch pwned'", I::HereDocument),
            ("$CMD pwned", I::VariableProgram),
            ("${CMD} pwned", I::VariableProgram),
            ("\"$CMD\" pwned", I::VariableProgram),
            ("/usr/bin/$T pwned", I::VariableProgram),
            ("sudo $CMD x", I::VariableProgram),
            ("/usr/bin/tou?h pwned", I::GlobProgram),
            ("/usr/bin/touc* pwned", I::GlobProgram),
            ("/usr/bin/touc[h] pwned", I::GlobProgram),
            ("{touch,pwned}", I::GlobProgram),
            ("trap 'touch pwned' EXIT", I::Trap),
            (&deep, I::TooManyWrappers),
            ("echo pwned | xargs touch", I::Xargs),
            ("env -S 'touch pwned'", I::EnvSplitString),
            ("echo 'unclosed", I::Quoting("a single quote is not closed")),
            (
                "echo \"unclosed",
                I::Quoting("a double quote is not closed"),
            ),
            ("echo \\", I::Quoting("a backslash ends the line")),
            ("echo >", I::Redirection("no target at the end")),
            ("echo > ; x", I::Redirection("no target before an operator")),
        ];
        for (line, want) in table {
            assert_eq!(refused(line), want, "{line:?}");
        }
        assert!(matches!(
            refused("sudo --frob touch pwned"),
            I::WrapperOption { .. }
        ));
        assert!(matches!(
            refused("sudo -X touch pwned"),
            I::WrapperOption { .. }
        ));
    }

    #[test]
    fn quoted_constructs_are_plain_text() {
        assert_eq!(texts("echo '$(touch pwned)'"), ["echo $(touch pwned)"]);
        assert_eq!(texts("echo '`x`' '<<EOF'"), ["echo `x` <<EOF"]);
        assert_eq!(texts(r"echo \$\(x\)"), ["echo $(x)"]);
        assert_eq!(texts("echo 'sh -c x' | cat"), ["echo sh -c x", "cat"]);
        // A shell running a script file, or not fed by a pipe, is fine.
        assert_eq!(texts("sh build.sh"), ["sh build.sh"]);
        assert_eq!(texts("cat x | sh build.sh"), ["cat x", "sh build.sh"]);
        assert_eq!(
            texts("bash -e -o pipefail run.sh"),
            ["bash -e -o pipefail run.sh"]
        );
    }

    #[test]
    fn long_lines_are_read_in_linear_time() {
        let started = std::time::Instant::now();
        let many = "touch 'a b' \"c$d\" >x; ".repeat(20_000);
        assert_eq!(simple_commands(&many).unwrap().len(), 20_000);
        let wide = format!("echo {}", "a ".repeat(100_000));
        assert_eq!(simple_commands(&wide).unwrap()[0].words.len(), 100_001);
        let wrapped = format!("sudo nohup env {}", "x ".repeat(100_000));
        assert_eq!(simple_commands(&wrapped).unwrap()[0].wrapped.len(), 3);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Property: any words, quoted by `shlex` and joined with an operator,
    /// come back as exactly those words, one simple command per side.
    #[test]
    fn quoted_words_round_trip() {
        const ALPHABET: &[char] = &[
            'a', 'b', ' ', '\t', '\n', '\'', '"', '\\', ';', '&', '|', '(', ')', '<', '>', '$',
            '`', '#', '*', '?', '[', ']', '{', '}', '~', '-', '%', '!', 'é',
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let word = |rng: &mut fastrand::Rng| -> String {
            let len = rng.usize(1..8);
            // `a` first: never an option, an assignment or a reserved word.
            // (`/` and `=` are left out: a program loses its directory, and
            // `a=` would be an assignment.)
            std::iter::once('a')
                .chain((0..len).map(|_| ALPHABET[rng.usize(..ALPHABET.len())]))
                .collect()
        };
        for _ in 0..2000 {
            let left: Vec<String> = (0..rng.usize(1..4)).map(|_| word(&mut rng)).collect();
            let right: Vec<String> = (0..rng.usize(1..4)).map(|_| word(&mut rng)).collect();
            let quote =
                |words: &[String]| shlex::try_join(words.iter().map(String::as_str)).unwrap();
            let op = ["; ", " && ", " || ", "\n", " & "][rng.usize(..5)];
            let line = format!("{}{op}{}", quote(&left), quote(&right));
            let commands = simple_commands(&line)
                .unwrap_or_else(|e| panic!("{line:?} ({left:?} {right:?}) refused: {e}"));
            let got: Vec<Vec<String>> = commands.into_iter().map(|c| c.words).collect();
            assert_eq!(got, vec![left.clone(), right.clone()], "{line:?}");
        }
    }
}
