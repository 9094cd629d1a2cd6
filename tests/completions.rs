//! `walhook completions SHELL` and `walhook man`: printed to stdout from the
//! command line's own definition, with no config and no database.

use std::ffi::OsStr;

use crate::support::{run_binary, stdout};

#[tokio::test]
async fn completions_are_a_script_the_shell_accepts_and_name_every_command() {
    let output = run_binary(&[OsStr::new("completions"), OsStr::new("bash")], &[]).await;
    assert!(output.status.success(), "{output:?}");
    let script = stdout(&output);
    assert!(script.contains("complete -F _walhook"), "{script}");
    for word in ["dead-letters", "--since", "backfill", "completions"] {
        assert!(script.contains(word), "{word} in {script}");
    }
    // bash parses it without running it.
    let path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(path.path(), &script).unwrap();
    let parsed = std::process::Command::new("bash")
        .arg("-n")
        .arg(path.path())
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{parsed:?}");

    for shell in ["zsh", "fish"] {
        let output = run_binary(&[OsStr::new("completions"), OsStr::new(shell)], &[]).await;
        assert!(output.status.success(), "{output:?}");
        assert!(stdout(&output).contains("walhook"));
    }
    let unknown = run_binary(&[OsStr::new("completions"), OsStr::new("tcsh")], &[]).await;
    assert_eq!(unknown.status.code(), Some(2));
}

#[tokio::test]
async fn the_manual_page_is_roff_for_man() {
    let output = run_binary(&[OsStr::new("man")], &[]).await;
    assert!(output.status.success(), "{output:?}");
    let page = stdout(&output);
    assert!(page.contains(".TH walhook 1"), "{page}");
    assert!(page.contains(".SH SYNOPSIS"), "{page}");
    assert!(page.contains("dead\\-letters"), "{page}");
}
