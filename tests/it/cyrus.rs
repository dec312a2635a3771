//! The live bot on a second real server: Cyrus IMAP 3.6 from Debian's package (`scripts/cyrus
//! up`), in its two namespace layouts, each test on a fresh user whose only folder is INBOX and
//! with a config that names folders the plain way. Replies go out through the test stack's
//! Postfix to the Microsoft side on Dovecot, as in `live`.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use crate::live::{block_on, setup_on_cyrus, Case, Cyrus, MAILBOX, THREAD};

const REFUSAL_ID: &str =
    "CH3PR21MB9986072BF6F670B8599A9D007CAB5A882C56@CH3PR21MB9986.namprd21.prod.outlook.com";

fn parse(raw: &[u8]) -> mail_parser::Message<'static> {
    mail_parser::MessageParser::default()
        .parse(raw)
        .expect("parses")
        .into_owned()
}

/// The thread was read, and nothing the bot did marked it read.
fn assert_inbox_untouched(case: &Case) {
    assert_eq!(case.messages(MAILBOX, "INBOX").len(), 3, "the thread stays");
    assert_eq!(case.unread("INBOX"), 3, "INBOX messages stay unread");
}

fn draft_mode_leaves_one_threaded_draft(layout: Cyrus) {
    let case = setup_on_cyrus(layout, "draft", "");
    case.deliver(&THREAD);
    case.run_once();
    case.run_once();
    let drafts = case.messages(MAILBOX, &layout.name("Drafts"));
    assert_eq!(drafts.len(), 1, "one draft after two runs");
    let draft = parse(&drafts[0]);
    assert_eq!(draft.in_reply_to().as_text(), Some(REFUSAL_ID));
    assert!(draft.subject().is_some_and(|s| s.starts_with("RE: ")));
    assert_inbox_untouched(&case);
    assert!(
        case.delivered_replies().is_empty(),
        "draft mode never sends"
    );
    // The bot shows where it will work on this server.
    let config = case.config.display().to_string();
    let check = case.bot(&["auth", "check", "--config", &config]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("drafts    {} ", layout.name("Drafts")))
            && shown.contains(" exists"),
        "{shown}"
    );
}

#[test]
fn cyrus_draft_mode_leaves_one_threaded_draft() {
    draft_mode_leaves_one_threaded_draft(Cyrus::Standard);
}

#[test]
fn cyrus_alt_namespace_draft_mode_leaves_one_threaded_draft() {
    draft_mode_leaves_one_threaded_draft(Cyrus::Alternative);
}

/// A person edits the review draft in a mail client and moves it to the approved folder.
fn approve_by_moving_the_edited_draft(layout: Cyrus) {
    let case = setup_on_cyrus(layout, "approve", "");
    case.deliver(&THREAD);
    case.run_once();
    let review = case.messages(MAILBOX, &case.review);
    assert_eq!(review.len(), 1, "mirrored for review in {}", case.review);
    let edited = String::from_utf8_lossy(&review[0]).replace("Kind regards,", "Edited on Cyrus,");
    // Beside it, a message that approves nothing: read by its header only, and left alone.
    let unrelated = "From: someone@example.org\r\nTo: postmaster@example.net\r\nSubject: lunch\r\nMessage-ID: <lunch.1@example.org>\r\n\r\nNoon?\r\n";
    block_on(async {
        let mut imap = case.connect(MAILBOX).await;
        imap.append(&case.approved, "()", unrelated.as_bytes())
            .await
            .expect("append");
        imap.append(&case.approved, "(\\Draft)", edited.as_bytes())
            .await
            .expect("append");
        imap.logout().await;
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        case.delivered_replies().is_empty(),
        "nothing before the run"
    );
    case.run_once();
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    assert!(replies[0]
        .body_text(0)
        .is_some_and(|b| b.contains("Edited on Cyrus")));
    assert_eq!(case.replies_after_another_run(), 1, "sent once");
    assert!(
        case.messages(MAILBOX, &case.review).is_empty(),
        "the review draft of a sent reply is gone"
    );
    let left = case.messages(MAILBOX, &case.approved);
    assert_eq!(left.len(), 1, "only the unrelated message is left");
    assert!(String::from_utf8_lossy(&left[0]).contains("lunch.1@example.org"));
    assert_inbox_untouched(&case);
}

#[test]
fn cyrus_approve_by_moving_the_edited_draft_sends_it_once() {
    approve_by_moving_the_edited_draft(Cyrus::Standard);
}

#[test]
fn cyrus_alt_namespace_approve_by_moving_the_edited_draft_sends_it_once() {
    approve_by_moving_the_edited_draft(Cyrus::Alternative);
}

#[test]
fn cyrus_approve_by_cli_sends_once() {
    let case = setup_on_cyrus(Cyrus::Standard, "approve", "");
    case.deliver(&THREAD);
    case.run_once();
    let config = case.config.display().to_string();
    let id = case.first_queued();
    let ok = case.bot(&["queue", "approve", &id, "--config", &config]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(case.replies_after_another_run(), 1, "sent once");
    assert!(case.messages(MAILBOX, &case.review).is_empty());
    assert_inbox_untouched(&case);
}

fn auto_mode_sends_once(layout: Cyrus) {
    let case = setup_on_cyrus(layout, "auto", "");
    case.deliver(&THREAD);
    case.run_once();
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].in_reply_to().as_text(), Some(REFUSAL_ID));
    assert_eq!(case.replies_after_another_run(), 1, "sent once");
    // The bot filed its reply in the Sent folder it created, the record a lost state store
    // is rebuilt from.
    assert_eq!(case.messages(MAILBOX, &case.sent).len(), 1, "{}", case.sent);
    case.lose_state();
    assert_eq!(
        case.replies_after_another_run(),
        1,
        "not again after a lost state"
    );
    assert_inbox_untouched(&case);
}

#[test]
fn cyrus_auto_mode_sends_once() {
    auto_mode_sends_once(Cyrus::Standard);
}

#[test]
fn cyrus_alt_namespace_auto_mode_sends_once() {
    auto_mode_sends_once(Cyrus::Alternative);
}

fn handled_mail_is_moved(layout: Cyrus) {
    let case = setup_on_cyrus(layout, "draft", "handled_folder = \"Handled\"");
    let has_move = block_on(async {
        let mut imap = case.connect(MAILBOX).await;
        let has = imap.has_capability("MOVE");
        imap.logout().await;
        has
    });
    assert_eq!(has_move, layout != Cyrus::WithoutMove, "{layout:?}");
    case.deliver(&THREAD);
    case.run_once();
    assert!(case.messages(MAILBOX, "INBOX").is_empty(), "moved out");
    assert_eq!(case.messages(MAILBOX, &layout.name("Handled")).len(), 3);
    assert_eq!(case.unread(&layout.name("Handled")), 3, "and still unread");
    assert_eq!(case.messages(MAILBOX, &case.drafts).len(), 1);
    case.run_once();
    assert_eq!(
        case.messages(MAILBOX, &case.drafts).len(),
        1,
        "no second draft"
    );
}

#[test]
fn cyrus_handled_mail_is_moved_with_move() {
    handled_mail_is_moved(Cyrus::Standard);
}

#[test]
fn cyrus_handled_mail_is_moved_without_move() {
    handled_mail_is_moved(Cyrus::WithoutMove);
}

/// With `idled` running, Cyrus pushes new mail to an idling client at once: the draft comes in
/// seconds, not on Cyrus' 60-second IDLE poll (and not on the bot's hour-long poll).
#[test]
fn cyrus_with_idled_wakes_the_daemon() {
    let case = setup_on_cyrus(Cyrus::Standard, "draft", "poll_seconds = 3600");
    let took = crate::live::time_until_draft(&case, crate::live::Ready::Idling(1));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
