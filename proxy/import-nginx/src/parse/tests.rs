//! Tests of the nginx reader: tokens, quoting, comments, blocks, line
//! numbers, includes (globs too) and syntax errors.

use super::*;

fn p(text: &str) -> Vec<Directive> {
    parse_str(text, "t.conf", Path::new(".")).unwrap()
}

#[test]
fn directives_blocks_and_lines() {
    let t =
        p("worker_processes 2;\n# a comment { ; }\nhttp {\n  server {\n    listen 80;\n  }\n}\n");
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].name, "worker_processes");
    assert_eq!(t[0].args, vec!["2"]);
    assert_eq!(t[0].at.line, 1);
    let http = &t[1];
    assert_eq!(http.at.line, 3);
    let server = &http.block.as_ref().unwrap()[0];
    assert_eq!(server.name, "server");
    let listen = &server.block.as_ref().unwrap()[0];
    assert_eq!((listen.name.as_str(), listen.at.line), ("listen", 5));
    assert_eq!(listen.at.to_string(), "t.conf:5");
}

#[test]
fn quotes_escapes_and_variables() {
    let t = p(
        r#"add_header X-A "a b;c" always; return 200 'it\'s {ok}'; location ~ \.php$ {} set $x ${host}abc;"#,
    );
    assert_eq!(t[0].args, vec!["X-A", "a b;c", "always"]);
    assert_eq!(t[1].args, vec!["200", "it's {ok}"]);
    assert_eq!(t[2].args, vec!["~", r"\.php$"]);
    assert_eq!(t[2].block.as_deref(), Some(&[][..]));
    assert_eq!(t[3].args, vec!["$x", "${host}abc"]);
}

#[test]
fn empty_quoted_argument_is_kept() {
    let t = p(r#"proxy_set_header Accept-Encoding "";"#);
    assert_eq!(t[0].args, vec!["Accept-Encoding", ""]);
}

#[test]
fn multi_line_quoted_string_counts_lines() {
    let t = p("return 200 \"a\nb\";\nlisten 80;");
    assert_eq!(t[0].args[1], "a\nb");
    assert_eq!(t[1].at.line, 3);
}

#[test]
fn syntax_errors_are_located() {
    for (text, line, what) in [
        ("listen 80", 1, "expecting `;`"),
        ("http {\n listen 80;\n", 2, "expecting `}`"),
        ("listen 80;\n}", 2, "unexpected `}`"),
        ("return 200 \"open;\n", 1, "unterminated"),
        ("server {\n listen 80\n}", 3, "missing `;`"),
    ] {
        let e = parse_str(text, "t.conf", Path::new(".")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("t.conf:{line}:")),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(what), "{text:?}: {msg}");
    }
}

#[test]
fn includes_follow_globs_relative_to_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sites")).unwrap();
    std::fs::create_dir_all(root.join("snippets")).unwrap();
    std::fs::write(
        root.join("nginx.conf"),
        "http {\n  include sites/*.conf;\n  include snippets/none-*.conf;\n}\n",
    )
    .unwrap();
    std::fs::write(root.join("sites/b.conf"), "server { listen 2; }\n").unwrap();
    std::fs::write(
        root.join("sites/a.conf"),
        "\nserver {\n  listen 1;\n  include snippets/proxy.conf;\n}\n",
    )
    .unwrap();
    std::fs::write(root.join("sites/a.conf.bak"), "broken {").unwrap();
    std::fs::write(
        root.join("snippets/proxy.conf"),
        "proxy_set_header X-A b;\n",
    )
    .unwrap();
    let t = parse_file(&root.join("nginx.conf")).unwrap();
    let all = t[0].block.as_ref().unwrap();
    // The include directives stay in the tree, ahead of what they expand to.
    let includes: Vec<&str> = all
        .iter()
        .filter(|d| d.name == "include")
        .map(|d| d.args[0].as_str())
        .collect();
    assert_eq!(includes, vec!["sites/*.conf", "snippets/none-*.conf"]);
    assert_eq!(all[0].name, "include");
    let http: Vec<&Directive> = all.iter().filter(|d| d.name != "include").collect();
    assert_eq!(http.len(), 2, "{http:?}");
    let a = http[0];
    assert!(a.at.file.ends_with("sites/a.conf"));
    assert_eq!(a.at.line, 2);
    let inner = a.block.as_ref().unwrap();
    assert_eq!(inner[1].name, "include");
    assert_eq!(inner[2].name, "proxy_set_header");
    assert!(inner[2].at.file.ends_with("snippets/proxy.conf"));
    assert_eq!(inner[2].at.line, 1);
    assert_eq!(http[1].block.as_ref().unwrap()[0].args, vec!["2"]);
}

#[test]
fn a_missing_include_is_an_error_naming_the_include() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nginx.conf"), "\ninclude missing.conf;\n").unwrap();
    let e = parse_file(&dir.path().join("nginx.conf")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("missing.conf") && msg.contains("nginx.conf:2"),
        "{msg}"
    );
}

#[test]
fn include_cycles_stop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nginx.conf"), "include nginx.conf;\n").unwrap();
    let e = parse_file(&dir.path().join("nginx.conf")).unwrap_err();
    assert!(e.to_string().contains("include nesting"), "{e}");
}

#[test]
fn wildcards() {
    assert!(wildcard_match("*.conf", "a.conf"));
    assert!(!wildcard_match("*.conf", "a.conf.bak"));
    assert!(wildcard_match("site-?.conf", "site-1.conf"));
    assert!(wildcard_match("[ab]*.conf", "b2.conf"));
    assert!(!wildcard_match("[!ab]*.conf", "b2.conf"));
    assert!(wildcard_match("[0-9].conf", "7.conf"));
    assert!(wildcard_match("*", ""));
}
