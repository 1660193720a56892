//! The file-serving edit of the real-config corpus, shared by the import
//! test (`proxy/import-nginx/tests/real_corpus.rs`) and the battery that
//! runs nginx beside Aegis (`proxy/tests/nginx_real.rs`), each of which
//! includes this file with `#[path]`.
//!
//! The configs serve files from where their projects install them
//! (`/home/mastodon/live/public`, `/usr/share/jitsi-meet`, ...), which do not
//! exist here. Aegis refuses a `static` route whose directory is missing
//! (nginx answers 404 for every file instead), so an import of the configs
//! as they are lists those locations as dropped. The edit: every absolute
//! `root` and `alias` (and a `set` of an absolute path, Discourse's
//! `$public`) is moved under a staging directory, created with a
//! small file in it, line for line (line numbers stay those of the corpus
//! file). Recorded in `tests/parity/real/EDITS.md`.

use std::path::Path;

/// The text of one staged file: what a request for it gets back.
pub fn staged_body(path: &str) -> String {
    format!("staged {path}\n")
}

/// `text` with each absolute `root`/`alias` path moved under `www`, and the
/// directories (or, for an alias naming a file, the file) created there: a
/// directory gets an `index.html`. A path with variables gets the
/// directory of its literal part.
pub fn stage_roots(text: &str, www: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let mut word = t.split_whitespace().next().unwrap_or("");
        let mut arg = t
            .get(word.len()..)
            .unwrap_or("")
            .trim_start()
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        // `set $public /var/www/discourse/public;` (then `root $public`):
        // the value is a root too.
        let set_path = word == "set" && arg.starts_with('$');
        if set_path {
            word = "set";
            arg = arg.split_whitespace().nth(1).unwrap_or("");
        }
        if !matches!(word, "root" | "alias" | "set") || !arg.starts_with('/') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let moved = format!("{}{arg}", www.display());
        let literal = moved.split('$').next().unwrap_or("");
        let file_alias = word == "alias"
            && !arg.contains('$')
            && !arg.ends_with('/')
            && Path::new(arg).extension().is_some();
        if file_alias {
            let p = Path::new(literal);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(p, staged_body(arg)).unwrap();
        } else {
            let dir = if arg.contains('$') && !literal.ends_with('/') {
                Path::new(literal).parent().unwrap_or(www).to_path_buf()
            } else {
                Path::new(literal).to_path_buf()
            };
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), staged_body(arg)).unwrap();
        }
        let rest = t.get(word.len()..).unwrap_or("");
        out.push_str(indent);
        out.push_str(word);
        out.push_str(&rest.replacen(arg, &moved, 1));
        out.push('\n');
    }
    out
}
