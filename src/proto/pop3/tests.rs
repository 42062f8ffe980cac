use super::*;

fn cfg(plaintext_ok: bool) -> Pop3Config {
    Pop3Config { hostname: "mx.test".into(), stls: true, plaintext_ok }
}

/// Feeds `input` and returns (output, step).
fn run(s: &mut Session, input: &str) -> (String, Step) {
    s.input().extend_from_slice(input.as_bytes());
    let step = s.advance();
    let out = String::from_utf8(s.output().split().to_vec()).unwrap();
    (out, step)
}

fn messages() -> Vec<Message> {
    (1..=3)
        .map(|i| Message { uid: format!("u{i}"), size: 100 * i, path: format!("/m/{i}").into() })
        .collect()
}

/// A session logged in with three messages of 100, 200 and 300 octets.
fn logged_in() -> Session {
    let mut s = Session::new(cfg(true), false);
    s.output().clear();
    let (_, step) = run(&mut s, "USER alice@example.com\r\nPASS secret word\r\n");
    let Step::Login(creds) = step else { panic!("{step:?}") };
    assert_eq!(creds.username, "alice@example.com");
    assert_eq!(creds.password.expose(), "secret word", "the rest of the line, spaces kept");
    s.handle_login(Login::Ok(messages()));
    assert_eq!(
        String::from_utf8(s.output().split().to_vec()).unwrap(),
        "+OK Logged in, 3 messages (600 octets)\r\n"
    );
    s
}

#[test]
fn greeting_capa_and_quit_before_login() {
    let mut s = Session::new(cfg(false), false);
    let (out, step) = run(&mut s, "CAPA\r\n");
    assert!(out.starts_with("+OK POP3 server mx.test ready\r\n+OK"), "{out}");
    assert!(out.contains("\r\nSTLS\r\n") && out.ends_with("\r\n.\r\n"), "{out}");
    assert!(!out.contains("USER"), "no plaintext login offered without TLS: {out}");
    assert_eq!(step, Step::NeedInput);
    assert_eq!(run(&mut s, "QUIT\r\n"), ("+OK Bye\r\n".into(), Step::Close));
}

#[test]
fn no_password_in_the_clear_unless_allowed() {
    let mut s = Session::new(cfg(false), false);
    s.output().clear();
    let (out, step) = run(&mut s, "USER a\r\nAUTH PLAIN AGEAYg==\r\n");
    assert_eq!(step, Step::NeedInput);
    assert_eq!(out.matches("-ERR [AUTH]").count(), 2, "{out}");
    let (out, step) = run(&mut s, "STLS\r\n");
    assert_eq!((out.as_str(), &step), ("+OK Begin TLS negotiation\r\n", &Step::StartTls));
    s.tls_established();
    let (out, step) = run(&mut s, "CAPA\r\nAUTH PLAIN AGEAYg==\r\n");
    assert!(out.contains("\r\nUSER\r\n") && !out.contains("STLS"), "{out}");
    let Step::Login(c) = step else { panic!("{step:?}") };
    assert_eq!((c.username.as_str(), c.password.expose()), ("a", "b"));
}

#[test]
fn auth_plain_with_a_continuation() {
    let mut s = Session::new(cfg(true), false);
    s.output().clear();
    let (out, step) = run(&mut s, "AUTH PLAIN\r\n");
    assert_eq!((out.as_str(), &step), ("+ \r\n", &Step::NeedInput));
    let (_, step) = run(&mut s, "AGEAYg==\r\n");
    assert!(matches!(step, Step::Login(_)), "{step:?}");
    s.handle_login(Login::Invalid);
    assert_eq!(
        String::from_utf8(s.output().split().to_vec()).unwrap(),
        "-ERR [AUTH] Authentication failed\r\n"
    );
    let (out, _) = run(&mut s, "AUTH PLAIN\r\n*\r\n");
    assert!(out.ends_with("-ERR Authentication cancelled\r\n"), "{out}");
}

#[test]
fn stat_list_uidl_top_retr() {
    let mut s = logged_in();
    assert_eq!(run(&mut s, "STAT\r\n").0, "+OK 3 600\r\n");
    assert_eq!(run(&mut s, "LIST\r\n").0, "+OK 3 messages\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n");
    assert_eq!(run(&mut s, "LIST 2\r\n").0, "+OK 2 200\r\n");
    assert_eq!(run(&mut s, "UIDL\r\n").0, "+OK 3 messages\r\n1 u1\r\n2 u2\r\n3 u3\r\n.\r\n");
    assert_eq!(run(&mut s, "UIDL 3\r\n").0, "+OK 3 u3\r\n");
    let (out, step) = run(&mut s, "RETR 2\r\n");
    assert_eq!(out, "+OK 200 octets\r\n");
    assert_eq!(step, Step::SendMessage { path: "/m/2".into(), body_lines: None });
    let (out, step) = run(&mut s, "TOP 1 5\r\n");
    assert_eq!(out, "+OK Top of message follows\r\n");
    assert_eq!(step, Step::SendMessage { path: "/m/1".into(), body_lines: Some(5) });
    assert_eq!(run(&mut s, "LIST 4\r\n").0, "-ERR No such message\r\n");
    assert_eq!(run(&mut s, "RETR x\r\n").0, "-ERR No such message\r\n");
    assert_eq!(run(&mut s, "TOP 1\r\n").0, "-ERR Syntax: TOP msg lines\r\n");
}

#[test]
fn deletions_happen_only_at_quit_and_rset_undoes_them() {
    let mut s = logged_in();
    assert_eq!(run(&mut s, "DELE 1\r\n").0, "+OK Message 1 deleted\r\n");
    assert_eq!(run(&mut s, "DELE 1\r\n").0, "-ERR Message already deleted\r\n");
    assert_eq!(run(&mut s, "STAT\r\n").0, "+OK 2 500\r\n");
    assert_eq!(run(&mut s, "LIST\r\n").0, "+OK 2 messages\r\n2 200\r\n3 300\r\n.\r\n");
    assert_eq!(run(&mut s, "RSET\r\n").0, "+OK 3 messages (600 octets)\r\n");
    run(&mut s, "DELE 3\r\nDELE 2\r\n");
    let (_, step) = run(&mut s, "QUIT\r\n");
    assert_eq!(step, Step::Update(vec!["/m/2".into(), "/m/3".into()]));
    s.handle_update(Ok(()));
    assert_eq!(String::from_utf8(s.output().split().to_vec()).unwrap(), "+OK Bye\r\n");
    assert_eq!(s.advance(), Step::Close);
    assert_eq!(s.deleted_count(), 2);
}

#[test]
fn commands_of_the_wrong_state_and_long_lines_are_refused() {
    let mut s = Session::new(cfg(true), false);
    s.output().clear();
    assert_eq!(run(&mut s, "STAT\r\n").0, "-ERR Unknown command or not logged in\r\n");
    assert_eq!(run(&mut s, "PASS x\r\n").0, "-ERR USER first\r\n");
    let long = format!("USER {}\r\nNOOP\r\n", "a".repeat(300));
    assert_eq!(
        run(&mut s, &long).0,
        "-ERR Line too long\r\n-ERR Unknown command or not logged in\r\n"
    );
    let mut s = logged_in();
    assert_eq!(run(&mut s, "USER x\r\n").0, "-ERR Unknown command\r\n");
    assert_eq!(run(&mut s, "NOOP\r\n").0, "+OK\r\n");
}

#[test]
fn ten_errors_end_the_session() {
    let mut s = Session::new(cfg(true), false);
    let (out, step) = run(&mut s, &"BOGUS\r\n".repeat(12));
    assert_eq!(step, Step::Close);
    assert_eq!(out.matches("-ERR").count(), 11, "{out}");
    assert!(out.ends_with("-ERR Too many errors; closing connection\r\n"));
}

#[test]
fn randomized_input_never_panics_and_every_line_gets_an_answer() {
    let mut next = crate::test_rng::xorshift(0x9093_5eed);
    let mut below = |n: u64| next() % n;
    let words = [
        "USER",
        "PASS",
        "STAT",
        "LIST",
        "RETR",
        "DELE",
        "TOP",
        "UIDL",
        "RSET",
        "NOOP",
        "CAPA",
        "AUTH",
        "STLS",
        "QUIT",
        "",
        "1",
        "0",
        "-1",
        "99999999999999999999",
        "PLAIN",
        "*",
    ];
    for _ in 0..2000 {
        let mut s = Session::new(cfg(below(2) == 0), false);
        let mut logged = false;
        for _ in 0..below(20) {
            let mut line: Vec<u8> = Vec::new();
            for _ in 0..below(4) {
                if below(5) == 0 {
                    line.extend((0..below(8)).map(|_| below(256) as u8));
                } else {
                    line.extend_from_slice(words[below(words.len() as u64) as usize].as_bytes());
                }
                line.push(b' ');
            }
            line.extend_from_slice(b"\r\n");
            s.input().extend_from_slice(&line);
            match s.advance() {
                Step::Login(_) => {
                    s.handle_login(if logged { Login::Busy } else { Login::Ok(messages()) });
                    logged = true;
                }
                Step::StartTls => s.tls_established(),
                Step::Update(_) => s.handle_update(Ok(())),
                Step::Close => break,
                Step::NeedInput | Step::SendMessage { .. } => {}
            }
            let out = s.output().split();
            assert!(out.is_empty() || out.ends_with(b"\r\n"));
        }
    }
}

fn stuff(input: &[u8], chunk: usize, lines: Option<u64>) -> String {
    let mut d = DotStuffer::new(lines);
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        d.feed(c, &mut out);
    }
    d.finish(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn dot_stuffing_in_any_chunking_rfc1939_3() {
    let msg = b"Subject: x\r\n.hidden: y\r\n\r\n.line\r\nbody\n..two\r\nlast";
    let want = "Subject: x\r\n..hidden: y\r\n\r\n..line\r\nbody\r\n...two\r\nlast\r\n.\r\n";
    for chunk in [1, 2, 3, 7, 100] {
        assert_eq!(stuff(msg, chunk, None), want, "chunk {chunk}");
    }
}

#[test]
fn top_sends_the_header_and_n_body_lines() {
    let msg = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n";
    assert_eq!(stuff(msg, 3, Some(0)), "A: 1\r\nB: 2\r\n\r\n.\r\n");
    assert_eq!(stuff(msg, 3, Some(2)), "A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n.\r\n");
    assert_eq!(stuff(msg, 3, Some(10)), "A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n.\r\n");
}
