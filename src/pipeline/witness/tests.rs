use super::*;

fn ours() -> Ours<'static> {
    static DOMAINS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["microsoft.com".to_string()]);
    Ours {
        loop_header: "X-Postmaster-Bot",
        instance: "mx-east",
        address: "postmaster@example.net",
        microsoft_domains: &DOMAINS,
    }
}

const PARENT: &str = "verdict.1@sender-support.microsoft.com";

fn thread() -> Thread<'static> {
    Thread {
        parent: Some(PARENT),
        parent_date: Some(1_700_000_000),
        ticket: Some("SRX1234567890ID"),
    }
}

fn copy(headers: &str) -> Copy {
    read_copy(headers.replace('\n', "\r\n").as_bytes(), "X-Postmaster-Bot").expect("parses")
}

const REPLY: &str = "Message-ID: <r1@postmaster.example.net>
From: Dana <postmaster@example.net>
To: support@microsoft.com
Subject: RE: Ticket SRX1234567890ID
Date: Tue, 14 Nov 2023 22:20:00 +0000
In-Reply-To: <verdict.1@sender-support.microsoft.com>
References: <ack.1@sender-support.microsoft.com> <verdict.1@sender-support.microsoft.com>
X-Postmaster-Bot: mx-east

";

#[test]
fn the_search_asks_ours_and_on_the_thread_then_one_thing_at_a_time() {
    let parent = "\"<verdict.1@sender-support.microsoft.com>\"";
    assert_eq!(
        search_keys(&thread(), &ours()),
        vec![
            format!(
                "OR HEADER X-Postmaster-Bot \"mx-east\" FROM \"postmaster@example.net\" \
                 OR OR HEADER In-Reply-To {parent} HEADER References {parent} SUBJECT \"SRX1234567890ID\""
            ),
            format!("HEADER In-Reply-To {parent}"),
            format!("HEADER References {parent}"),
            "SUBJECT \"SRX1234567890ID\"".to_string(),
        ]
    );
    // Prefix ORs only: some servers refuse parenthesised groups.
    assert!(!search_keys(&thread(), &ours())[0].contains('('));
}

#[test]
fn a_value_that_cannot_be_quoted_is_left_out_never_altered() {
    let t = Thread {
        parent: Some("a\"b\\c@x"),
        parent_date: None,
        ticket: Some("SRX1234567890ID"),
    };
    let keys = search_keys(&t, &ours());
    assert!(keys[0].ends_with("SUBJECT \"SRX1234567890ID\""), "{keys:?}");
    assert!(!keys.concat().contains("a\"b"), "{keys:?}");
    let mut o = ours();
    o.instance = "mx\r\neast";
    o.address = "pöstmaster@example.net";
    assert_eq!(search_keys(&t, &o), vec!["SUBJECT \"SRX1234567890ID\""]);
    assert!(search_keys(&Thread::default(), &ours()).is_empty());
}

#[test]
fn header_fields_read_what_the_judgement_needs() {
    let c = copy(REPLY);
    assert_eq!(c.message_id.as_deref(), Some("r1@postmaster.example.net"));
    assert_eq!(c.in_reply_to, vec![PARENT.to_string()]);
    assert_eq!(c.references.len(), 2);
    assert_eq!(c.from.as_deref(), Some("postmaster@example.net"));
    assert_eq!(c.recipients, vec!["support@microsoft.com".to_string()]);
    assert_eq!(c.loop_value.as_deref(), Some("mx-east"));
    assert_eq!(c.date, Some(1_700_000_400));
    assert!(header_fields("X-Postmaster-Bot").ends_with(" X-Postmaster-Bot"));
}

#[test]
fn our_reply_to_the_same_message_means_it_was_made() {
    let found = earlier_replies(&[copy(REPLY)], &thread(), &ours(), &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].author, Author::Bot);
    let finding = judge(
        &found,
        Template::EscalationReply,
        &thread(),
        |_| false,
        1,
        1,
    );
    assert!(matches!(finding, Finding::Answered(ref e) if e.relation == Relation::AnswersParent));
    // Even when the store knows it: the same reply twice is never right.
    let finding = judge(&found, Template::Followup, &thread(), |_| true, 1, 1);
    assert!(matches!(finding, Finding::Answered(_)));
}

#[test]
fn what_is_not_our_reply_to_microsoft_is_no_witness() {
    let cases = [
        // Our notification to the operator: ours, on the thread, but not to Microsoft.
        REPLY.replace("To: support@microsoft.com", "To: noc@example.net"),
        // Another bot instance sharing the mailbox, and not from our address.
        REPLY
            .replace("X-Postmaster-Bot: mx-east", "X-Postmaster-Bot: mx-east-2")
            .replace(
                "From: Dana <postmaster@example.net>",
                "From: other@example.net",
            ),
        // Microsoft's own message on the thread.
        REPLY
            .replace(
                "From: Dana <postmaster@example.net>",
                "From: support@microsoft.com",
            )
            .replace("X-Postmaster-Bot: mx-east\n", ""),
        // Ours to Microsoft, about another thread.
        REPLY
            .replace("verdict.1@", "verdict.9@")
            .replace("SRX1234567890ID", "SRX9999999999ID"),
    ];
    for text in cases {
        let found = earlier_replies(&[copy(&text)], &thread(), &ours(), &[]);
        assert!(found.is_empty(), "{text}\n{found:?}");
    }
}

#[test]
fn the_planned_reply_s_own_copy_is_not_an_earlier_one() {
    let c = copy(REPLY);
    assert!(earlier_replies(
        std::slice::from_ref(&c),
        &thread(),
        &ours(),
        &["r1@postmaster.example.net"]
    )
    .is_empty());
    let token = copy(&format!(
        "X-Postmaster-Bot-Review: <row-7@x>\n{}",
        REPLY.replace("r1@", "edited@")
    ));
    assert_eq!(token.review_token.as_deref(), Some("row-7@x"));
    assert!(earlier_replies(&[token], &thread(), &ours(), &["row-7@x"]).is_empty());
    // One message in Sent and in the inbox (a Bcc) is one reply.
    assert_eq!(
        earlier_replies(&[c.clone(), c], &thread(), &ours(), &[]).len(),
        1
    );
}

#[test]
fn a_reply_by_hand_from_our_address_counts() {
    let by_hand = REPLY.replace("X-Postmaster-Bot: mx-east\n", "");
    let found = earlier_replies(&[copy(&by_hand)], &thread(), &ours(), &[]);
    assert_eq!(found[0].author, Author::Person);
}

#[test]
fn earlier_escalations_on_the_ticket_count_toward_the_cap() {
    let older = REPLY
        .replace("verdict.1@", "verdict.0@")
        .replace("22:20:00", "10:00:00");
    let found = earlier_replies(&[copy(&older)], &thread(), &ours(), &[]);
    assert_eq!(found[0].relation, Relation::OnTicket);
    let judged = |template, known: bool, escalations, max| {
        judge(&found, template, &thread(), |_| known, escalations, max)
    };
    // Unknown to the store: with the planned one that would be two escalations, one allowed.
    assert_eq!(
        judged(Template::EscalationReply, false, 1, 1),
        Finding::OverCap {
            escalations: 1,
            earlier: found[0].clone()
        }
    );
    // Two allowed: the planned one is the second.
    assert_eq!(
        judged(Template::EscalationReply, false, 1, 2),
        Finding::Clear
    );
    // Known to the store: already counted in `escalations`.
    assert_eq!(
        judged(Template::EscalationReply, true, 2, 2),
        Finding::Clear
    );
    // A follow-up is not an escalation.
    assert_eq!(judged(Template::Followup, false, 1, 1), Finding::Clear);
}

#[test]
fn a_reply_on_the_ticket_after_the_message_answers_it() {
    let later = REPLY.replace("verdict.1@", "other@");
    let found = earlier_replies(&[copy(&later)], &thread(), &ours(), &[]);
    assert_eq!(found[0].relation, Relation::OnTicket);
    assert!(matches!(
        judge(&found, Template::Followup, &thread(), |_| false, 1, 1),
        Finding::Answered(_)
    ));
}

#[test]
fn the_review_token_is_added_to_the_copy_and_stripped_before_sending() {
    let body =
        b"Message-ID: <a@b>\r\nSubject: x\r\n\r\nX-Postmaster-Bot-Review: stays in the body\r\n";
    let review = with_review_token(body, "a@b");
    assert!(review.starts_with(b"X-Postmaster-Bot-Review: <a@b>\r\nMessage-ID"));
    assert_eq!(strip_review_token(&review), body.to_vec());
    // Folded, in any case, anywhere in the header.
    let folded = b"Subject: x\r\nx-postmaster-bot-review :\r\n <a@b>\r\nTo: y\r\n\r\nbody";
    assert_eq!(
        strip_review_token(folded),
        b"Subject: x\r\nTo: y\r\n\r\nbody".to_vec()
    );
    // A look-alike name stays.
    let other = b"X-Postmaster-Bot-Reviewer: z\r\n\r\n";
    assert_eq!(strip_review_token(other), other.to_vec());
}

proptest::proptest! {
    #[test]
    fn stripping_never_panics_and_keeps_the_body(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let out = strip_review_token(&raw);
        proptest::prop_assert!(out.len() <= raw.len());
        let _ = read_copy(&raw, "X-Postmaster-Bot");
    }
}
