//! nginx configuration text → a tree of [`Directive`]s.
//!
//! Follows nginx's own reader (`ngx_conf_file.c`) closely enough for
//! reverse-proxy configs: words end at whitespace, `;`, `{` and `}`; `#`
//! starts a comment where a word could start; single and double quotes
//! group, with `\"`, `\'`, `\\`, `\t`, `\r`, `\n` unescaped and any other
//! backslash kept (so `\.php$` reaches the regex engine intact).
//!
//! `include` is expanded while reading, as nginx does: a relative path is
//! taken relative to the directory of the main configuration file (nginx's
//! conf prefix), and a path with `*`, `?` or `[` is a glob whose matches are
//! read in sorted order (no match is not an error, as in nginx). Every
//! directive keeps the file and line it was written on, so findings can point
//! at `file:line` even inside included files. The `include` directive itself
//! stays in the tree, just before the directives it expanded to, so that the
//! import report can account for every directive of the input.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a directive was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One directive: `name arg...;` or `name arg... { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// The children, for block directives.
    pub block: Option<Vec<Directive>>,
    pub at: Loc,
}

impl Directive {
    /// The directive as written, abbreviated: `name arg arg`.
    pub fn text(&self) -> String {
        let mut out = self.name.clone();
        for a in &self.args {
            out.push(' ');
            if a.is_empty() || a.contains(char::is_whitespace) {
                out.push('"');
                out.push_str(a);
                out.push('"');
            } else {
                out.push_str(a);
            }
        }
        if out.chars().count() > 100 {
            out = out.chars().take(97).collect::<String>() + "...";
        }
        out
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{at}: {message}")]
    Syntax { at: Loc, message: String },
    #[error("{at}: include nesting deeper than {MAX_INCLUDE_DEPTH} (an include cycle?)")]
    IncludeDepth { at: Loc },
}

const MAX_INCLUDE_DEPTH: usize = 32;

/// Reads `path` and every file it includes.
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let prefix = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut reader = Reader { prefix };
    reader.file(path, 0, None)
}

/// Parses text in memory (no includes are followed relative to anything but
/// `prefix`). `name` is what locations show as the file.
pub fn parse_str(text: &str, name: &str, prefix: &Path) -> Result<Vec<Directive>, ParseError> {
    let mut reader = Reader {
        prefix: prefix.to_path_buf(),
    };
    reader.text(text, name, 0)
}

struct Reader {
    prefix: PathBuf,
}

impl Reader {
    fn file(
        &mut self,
        path: &Path,
        depth: usize,
        from: Option<&Loc>,
    ) -> Result<Vec<Directive>, ParseError> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(ParseError::IncludeDepth {
                at: from.cloned().unwrap_or(Loc {
                    file: Arc::from(path.display().to_string()),
                    line: 0,
                }),
            });
        }
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ParseError::Read {
            file: match from {
                Some(at) => format!("{name} (included at {at})"),
                None => name.clone(),
            },
            source,
        })?;
        self.text(&text, &name, depth)
    }

    fn text(&mut self, text: &str, name: &str, depth: usize) -> Result<Vec<Directive>, ParseError> {
        let file: Arc<str> = Arc::from(name);
        let tokens = tokenize(text, &file)?;
        let mut pos = 0;
        let out = self.block(&tokens, &mut pos, &file, depth, false)?;
        Ok(out)
    }

    fn block(
        &mut self,
        tokens: &[Token],
        pos: &mut usize,
        file: &Arc<str>,
        depth: usize,
        nested: bool,
    ) -> Result<Vec<Directive>, ParseError> {
        let mut out = Vec::new();
        let mut words: Vec<(String, usize)> = Vec::new();
        while let Some(tok) = tokens.get(*pos) {
            *pos = pos.saturating_add(1);
            match tok {
                Token::Word(w, line) => words.push((w.clone(), *line)),
                Token::Semi(line) => {
                    let d = directive(std::mem::take(&mut words), None, file, *line)?;
                    if d.name == "include" {
                        // Kept in the tree (so the import report can list
                        // it), followed by what it expands to.
                        let expanded = self.include(&d, depth)?;
                        out.push(d);
                        out.extend(expanded);
                    } else {
                        out.push(d);
                    }
                }
                Token::Open(line) => {
                    let children = self.block(tokens, pos, file, depth, true)?;
                    out.push(directive(
                        std::mem::take(&mut words),
                        Some(children),
                        file,
                        *line,
                    )?);
                }
                Token::Close(line) => {
                    if !words.is_empty() {
                        return Err(syntax(file, *line, "unexpected `}` (missing `;`?)"));
                    }
                    if nested {
                        return Ok(out);
                    }
                    return Err(syntax(file, *line, "unexpected `}`"));
                }
            }
        }
        if let Some((_, line)) = words.first() {
            return Err(syntax(file, *line, "unexpected end of file, expecting `;`"));
        }
        if nested {
            let line = tokens.last().map_or(1, Token::line);
            return Err(syntax(file, line, "unexpected end of file, expecting `}`"));
        }
        Ok(out)
    }

    fn include(&mut self, d: &Directive, depth: usize) -> Result<Vec<Directive>, ParseError> {
        let Some(pattern) = d.args.first().filter(|_| d.args.len() == 1) else {
            return Err(ParseError::Syntax {
                at: d.at.clone(),
                message: "include takes exactly one path".into(),
            });
        };
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            self.prefix.join(pattern)
        };
        let files = if is_glob(pattern) {
            glob(&full)
        } else {
            vec![full]
        };
        let mut out = Vec::new();
        for f in files {
            out.extend(self.file(&f, depth.saturating_add(1), Some(&d.at))?);
        }
        Ok(out)
    }
}

fn syntax(file: &Arc<str>, line: usize, message: &str) -> ParseError {
    ParseError::Syntax {
        at: Loc {
            file: file.clone(),
            line,
        },
        message: message.to_string(),
    }
}

fn directive(
    words: Vec<(String, usize)>,
    block: Option<Vec<Directive>>,
    file: &Arc<str>,
    end_line: usize,
) -> Result<Directive, ParseError> {
    let mut it = words.into_iter();
    let Some((name, line)) = it.next() else {
        return Err(syntax(
            file,
            end_line,
            if block.is_some() {
                "a block without a directive name"
            } else {
                "unexpected `;`"
            },
        ));
    };
    Ok(Directive {
        name,
        args: it.map(|(w, _)| w).collect(),
        block,
        at: Loc {
            file: file.clone(),
            line,
        },
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Semi(usize),
    Open(usize),
    Close(usize),
}

impl Token {
    fn line(&self) -> usize {
        match self {
            Token::Word(_, l) | Token::Semi(l) | Token::Open(l) | Token::Close(l) => *l,
        }
    }
}

fn tokenize(text: &str, file: &Arc<str>) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line: usize = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line = line.saturating_add(1);
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            ';' => {
                out.push(Token::Semi(line));
                chars.next();
            }
            '{' => {
                out.push(Token::Open(line));
                chars.next();
            }
            '}' => {
                out.push(Token::Close(line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut word = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '\n' {
                        line = line.saturating_add(1);
                    }
                    if c == quote {
                        closed = true;
                        break;
                    }
                    if c == '\\' {
                        match chars.next() {
                            Some(e) => {
                                if e == '\n' {
                                    line = line.saturating_add(1);
                                }
                                unescape(&mut word, e);
                            }
                            None => break,
                        }
                    } else {
                        word.push(c);
                    }
                }
                if !closed {
                    return Err(syntax(file, start, "unterminated quoted string"));
                }
                out.push(Token::Word(word, start));
            }
            _ => {
                let start = line;
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == ';' || c == '{' || c == '}' {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        match chars.next() {
                            Some(e) => unescape(&mut word, e),
                            None => word.push('\\'),
                        }
                    } else if c == '$' && chars.peek() == Some(&'{') {
                        // `${name}`: the braces belong to the variable.
                        word.push(c);
                        for c in chars.by_ref() {
                            word.push(c);
                            if c == '}' {
                                break;
                            }
                        }
                    } else {
                        word.push(c);
                    }
                }
                out.push(Token::Word(word, start));
            }
        }
    }
    Ok(out)
}

/// nginx's unescaping: `\"`, `\'`, `\\` lose the backslash, `\t` `\r` `\n`
/// become control characters, anything else keeps it.
fn unescape(word: &mut String, e: char) {
    match e {
        '"' | '\'' | '\\' => word.push(e),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        'n' => word.push('\n'),
        other => {
            word.push('\\');
            word.push(other);
        }
    }
}

fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Expands a glob: `*`, `?` and `[...]` in any path component; matches
/// sorted, hidden files matched only by a pattern starting with `.`.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        if is_glob(&part) {
            for base in &current {
                let dir = if base.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    base.clone()
                };
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.') || part.starts_with('.'))
                    .filter(|n| wildcard_match(&part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            }
        } else {
            next = current.iter().map(|b| b.join(&part)).collect();
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    current
}

/// Shell-style matching of one path component.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => {
            (0..=n.len()).any(|i| n.get(i..).is_some_and(|tail| match_from(rest, tail)))
        }
        Some(('?', rest)) => n
            .split_first()
            .is_some_and(|(_, tail)| match_from(rest, tail)),
        Some(('[', rest)) => {
            let Some(close) = rest.iter().skip(1).position(|c| *c == ']').map(|i| i + 1) else {
                return n.first() == Some(&'[') && match_from(rest, n.get(1..).unwrap_or(&[]));
            };
            let Some((c, tail)) = n.split_first() else {
                return false;
            };
            let class = rest.get(..close).unwrap_or(&[]);
            let (negate, class) = match class.split_first() {
                Some(('!' | '^', r)) => (true, r),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while let Some(a) = class.get(i) {
                if class.get(i + 1) == Some(&'-')
                    && let Some(b) = class.get(i + 2)
                {
                    hit |= (*a..=*b).contains(c);
                    i += 3;
                    continue;
                }
                hit |= a == c;
                i += 1;
            }
            hit != negate && match_from(rest.get(close + 1..).unwrap_or(&[]), tail)
        }
        Some((lit, rest)) => n
            .split_first()
            .is_some_and(|(c, tail)| c == lit && match_from(rest, tail)),
    }
}

#[cfg(test)]
mod tests;
