use super::*;
use crate::pipeline::parse::{parse, Limits};

const OURS: &str = "Authentication-Results: mx1.example.net; dkim=pass header.d=microsoft.com; dmarc=pass header.from=microsoft.com\n";

/// The context the pipeline's unit tests share.
pub(crate) fn ctx() -> Context {
    Context {
        authserv_ids: vec!["mx1.example.net".into()],
        microsoft_domains: vec!["microsoft.com".into()],
        own_addresses: vec!["postmaster@example.net".into()],
        own_message_id_domains: vec!["postmaster.example.net".into()],
        loop_header: "X-Postmaster-Bot".into(),
        reporting_mtas: vec!["out1.example.net".into()],
        ..Context::default()
    }
}

fn classify_text(raw: &str) -> Verdict {
    let rules = Rules::builtin().expect("rules");
    classify(&parse(raw.as_bytes(), Limits::default()), &rules, &ctx())
}

fn ms(auth: &str, subject: &str, body: &str) -> String {
    format!("{auth}From: Outlook.com Deliverability Support <support@microsoft.com>\nTo: postmaster@example.net\nSubject: {subject}\nMessage-ID: <x@microsoft.com>\n\n{body}")
}

#[track_caller]
fn check(raw: &str, kind: Kind, ticket: Option<&str>, ips: &[&str]) -> Verdict {
    let v = classify_text(raw);
    assert_eq!(
        (
            v.kind,
            v.ticket_id.as_deref(),
            v.ips.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        (kind, ticket, ips.to_vec()),
        "evidence: {:?}",
        v.evidence
    );
    v
}

const REFUSAL: &str = "We have completed reviewing the IP(s) you submitted.\n\nNot qualified for mitigation\n192.0.2.9\nOur investigation has determined that the above IP(s) do not qualify for mitigation.\n";

#[test]
fn verified_refusal_is_not_qualified() {
    let v = check(
        &ms(OURS, "RE: SRX1234567890ID - blocked", REFUSAL),
        Kind::MsNotQualified,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
    assert!(v.trusted);
    assert!(v.evidence.iter().any(|e| e.rule == "heading.not_qualified"));
}

#[test]
fn forged_results_below_ours_do_not_count() {
    let forged = "Authentication-Results: mx1.example.net; dmarc=fail header.from=microsoft.com\nAuthentication-Results: mx1.example.net; dmarc=pass header.from=microsoft.com\n";
    check(
        &ms(forged, "RE: SRX1234567890ID", REFUSAL),
        Kind::Other,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
    let foreign =
        "Authentication-Results: mx.microsoft.com; dmarc=pass header.from=microsoft.com\n";
    check(
        &ms(foreign, "RE: SRX1234567890ID", REFUSAL),
        Kind::Other,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
    let unaligned = "Authentication-Results: mx1.example.net; dkim=pass header.d=microsoft.com\n";
    let raw = format!("{unaligned}From: Support <support@outlook-help.example>\nSubject: RE: SRX1234567890ID\n\n{REFUSAL}");
    check(&raw, Kind::Other, Some("SRX1234567890ID"), &["192.0.2.9"]);
}

#[test]
fn genuine_microsoft_mail_without_support_markers_is_other() {
    let raw = format!("{OURS}From: Microsoft account team <account-security-noreply@accountprotection.microsoft.com>\nSubject: Unusual sign-in activity\n\nWe detected something unusual about a recent sign-in from 203.0.113.50.\n");
    let v = check(&raw, Kind::Other, None, &["203.0.113.50"]);
    assert_eq!(v.origin, Origin::Unrelated);
}

#[test]
fn mixed_table_refuses_only_the_not_qualified_rows() {
    let body = "The following table contains the results of our investigation.\n\nMitigated\n192.0.2.30\n\nNot qualified for mitigation\n192.0.2.31\n198.51.100.0 - 198.51.100.255\n";
    let v = check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsNotQualified,
        Some("SRX1234567890ID"),
        &["192.0.2.30", "192.0.2.31", "198.51.100.0/24"],
    );
    assert_eq!(v.refused_ips(), vec!["192.0.2.31", "198.51.100.0/24"]);
}

#[test]
fn one_line_rows_carry_their_own_outcome() {
    let body = "Results:\n192.0.2.40 | Mitigated\n192.0.2.41 | Conditionally mitigated\n";
    let v = check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsConditionallyMitigated,
        Some("SRX1234567890ID"),
        &["192.0.2.40", "192.0.2.41"],
    );
    assert_eq!(v.outcomes.len(), 2);
}

#[test]
fn quoted_history_does_not_decide_the_kind() {
    let body = "Hello,\n\nWe will be looking into this issue along with the Escalations Team regarding IP: (192.0.2.9).\n\n________________________________\nFrom: Example Postmaster <postmaster@example.net>\nSent: Tuesday\n\n> Not qualified for mitigation\n> 192.0.2.9\n";
    check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsEscalated,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
}

#[test]
fn localized_templates_are_recognised() {
    let de = "Sehr geehrte Damen und Herren,\n\nBedingt entsperrt\n192.0.2.50\nUnsere Untersuchung hat festgestellt, dass die oben genannte IP-Adresse(n) f\u{fc}r eine bedingte Entblockung qualifiziert ist (sind).\n";
    check(
        &ms(OURS, "RE: SRX1234567890ID", de),
        Kind::MsConditionallyMitigated,
        Some("SRX1234567890ID"),
        &["192.0.2.50"],
    );
    let es = "Hola,\n\nHemos determinado que la IP 192.0.2.51 no califica para la mitigaci\u{f3}n en este momento.\n";
    check(
        &ms(OURS, "RE: SRX1234567890ID", es),
        Kind::MsNotQualified,
        Some("SRX1234567890ID"),
        &["192.0.2.51"],
    );
}

#[test]
fn acknowledgement_that_echoes_a_refusal_stays_an_acknowledgement() {
    let body = "Thank you for contacting us. We have received your request regarding:\n\n192.0.2.9\n\nYour description: last time you said we do not qualify for mitigation.\n";
    check(
        &ms(OURS, "Request ID: 7096815524", body),
        Kind::MsAck,
        Some("7096815524"),
        &["192.0.2.9"],
    );
}

#[test]
fn bounce_codes_decide_block_list_or_throttle() {
    let bounce = |diag: &str| {
        format!("From: MAILER-DAEMON@out.example.net (Mail Delivery System)\nSubject: Undelivered Mail Returned to Sender\n\n<u@outlook.com>: host outlook-com.olc.protection.outlook.com[52.101.1.1] said:\n    {diag}\n")
    };
    let v = check(&bounce("550 5.7.1 Unfortunately, messages from [192.0.2.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)."), Kind::NdrMsBlocklist, None, &["192.0.2.7"]);
    assert_eq!(
        v.bounce.as_ref().map(|b| b.channel),
        Some(Some(Channel::Outlook))
    );
    let v = check(&bounce("451 4.7.652 The mail server [192.0.2.7] has exceeded the maximum number of connections. (S3115)"), Kind::NdrOther, None, &["192.0.2.7"]);
    assert!(!v.bounce.as_ref().is_some_and(|b| b.notify));
    let v = check(&bounce("451 4.7.650 The mail server [192.0.2.7] has been temporarily rate limited due to IP reputation. (S775)"), Kind::NdrOther, None, &["192.0.2.7"]);
    assert!(v.bounce.as_ref().is_some_and(|b| b.notify));
    let v = check(&bounce("550 5.7.606 Access denied, banned sending IP [192.0.2.7]. To request removal from this list please visit https://sender.office.com/"), Kind::NdrMsBlocklist, None, &["192.0.2.7"]);
    assert_eq!(
        v.bounce.as_ref().map(|b| b.channel),
        Some(Some(Channel::M365))
    );
}

#[test]
fn quoted_bounce_text_in_a_human_mail_is_not_a_bounce() {
    let raw = "From: Customer <c@shop.example>\nSubject: Re: our mail bounces\n\nWe get this:\n550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't sent. (S3140)\n";
    check(raw, Kind::Other, None, &["198.51.100.7"]);
}

#[test]
fn jmrp_reports_name_our_ip_not_the_reporter() {
    let raw = "From: staff@hotmail.com\nSubject: complaint about message from 192.0.2.25\nContent-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: message/rfc822\n\nX-HmXmrOriginalRecipient: <u@hotmail.com>\nX-Reporter-IP: 203.0.113.201\nFrom: n@news.example\n\nhi\n--B--\n";
    check(raw, Kind::JmrpReport, None, &["192.0.2.25"]);
}

const OUR_MX_FOR_US: &str = "Authentication-Results: mx1.example.net; dkim=pass header.d=example.net; dmarc=pass header.from=example.net\n";

#[test]
fn our_own_mail_is_never_a_result() {
    // Our Message-ID, and our MX authenticated it as from our domain.
    let raw = format!("{OUR_MX_FOR_US}From: Postmaster <postmaster@example.net>\nTo: support@microsoft.com\nMessage-ID: <r1@postmaster.example.net>\nSubject: Re: RE: SRX1234567890ID\n\n{REFUSAL}");
    let v = check(&raw, Kind::Other, Some("SRX1234567890ID"), &["192.0.2.9"]);
    assert_eq!(v.origin, Origin::Own);
    assert_eq!(v.own_claim, None);
    // Our Message-ID without authentication: ours only if the outbox sent it.
    let raw = format!("From: Postmaster <postmaster@example.net>\nMessage-ID: <r2@postmaster.example.net>\nSubject: Re: RE: SRX1234567890ID\n\n{REFUSAL}");
    let v = classify_text(&raw);
    assert_ne!(v.origin, Origin::Own);
    assert_eq!(v.own_claim.as_deref(), Some("r2@postmaster.example.net"));
    let rules = Rules::builtin().expect("rules");
    let confirmed = confirm_own(
        &v,
        &parse(raw.as_bytes(), Limits::default()),
        &rules,
        &ctx(),
    );
    assert_eq!(confirmed.origin, Origin::Own);
    assert_eq!(confirmed.kind, Kind::Other);
}

#[test]
fn headers_that_merely_look_like_ours_are_believed_from_nobody() {
    // A forged "our reply": our loop header, our X-Mailer, our From, a foreign Message-ID.
    let raw = format!("X-Postmaster-Bot: postmaster-bot\nX-Mailer: postmaster-bot 1.0\nFrom: Postmaster <postmaster@example.net>\nMessage-ID: <f@evil.example>\nSubject: Re: RE: SRX1234567890ID\n\n{REFUSAL}");
    let v = classify_text(&raw);
    assert_ne!(v.origin, Origin::Own);
    assert_eq!(v.own_claim, None);
    assert!(
        v.evidence.iter().any(|e| e.rule == "own.not_ours"),
        "{:?}",
        v.evidence
    );
    // Genuine Microsoft mail that carries our loop header is a loop risk, not our own mail.
    let raw = format!("{OURS}X-Postmaster-Bot: postmaster-bot\nFrom: Outlook.com Deliverability Support <support@microsoft.com>\nSubject: RE: SRX1234567890ID\n\n{REFUSAL}");
    let v = check(
        &raw,
        Kind::MsNotQualified,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
    assert!(v.loop_risk.is_some_and(|r| r.contains("X-Postmaster-Bot")));
}

#[test]
fn trust_needs_dmarc_for_the_single_from_domain_above_foreign_hops() {
    let trusted = |raw: &str| classify_text(raw).trusted;
    let body = "Subject: RE: SRX1234567890ID\n\nNot qualified for mitigation\n192.0.2.9\n";
    let from = "From: Outlook.com Deliverability Support <support@microsoft.com>\n";
    assert!(trusted(&format!("{OURS}{from}{body}")));
    // DMARC passed for another domain than the From's.
    let other = "Authentication-Results: mx1.example.net; dkim=pass header.d=microsoft.com; dmarc=pass header.from=attacker.example\n";
    assert!(!trusted(&format!("{other}{from}{body}")));
    // DKIM alone, even aligned, is not DMARC.
    let dkim = "Authentication-Results: mx1.example.net; dkim=pass header.d=microsoft.com\n";
    assert!(!trusted(&format!("{dkim}{from}{body}")));
    // Two authors: DMARC cannot speak for both.
    let two =
        "From: Outlook.com Deliverability Support <support@microsoft.com>, x@attacker.example\n";
    assert!(!trusted(&format!("{OURS}{two}{body}")));
    // The escaped quote smuggle inside our MX's header.
    let smuggle = "Authentication-Results: mx1.example.net; spf=fail smtp.mailfrom=\"a\\\"; dmarc=pass header.from=microsoft.com; b=\\\"\"\n";
    assert!(!trusted(&format!("{smuggle}{from}{body}")));
    // Our header below a Received header our hosts did not add was in the message already.
    let ours_received = "Received: from mail.microsoft.com by mx1.example.net (Postfix); Tue, 1 Oct 2024 10:00:00 +0000\n";
    let foreign = "Received: from attacker.example by relay.attacker.example; Tue, 1 Oct 2024 09:59:00 +0000\n";
    assert!(trusted(&format!(
        "{ours_received}{OURS}{foreign}{from}{body}"
    )));
    assert!(!trusted(&format!(
        "{ours_received}{foreign}{OURS}{from}{body}"
    )));
}

#[test]
fn auto_replies_and_lists_are_other() {
    let ooo = format!("{OURS}From: Outlook.com Deliverability Support <support@microsoft.com>\nSubject: Automatic reply: SRX1234567890ID\n\n{REFUSAL}");
    assert_eq!(classify_text(&ooo).origin, Origin::AutoReply);
    let list = format!("{OURS}List-Id: <news.microsoft.com>\nFrom: Outlook.com Deliverability Support <support@microsoft.com>\nSubject: RE: SRX1234567890ID\n\n{REFUSAL}");
    assert_eq!(classify_text(&list).origin, Origin::List);
}

#[test]
fn loop_risks_are_reported_on_verified_mail() {
    let raw = format!("{OURS}Return-Path: <>\nFrom: Outlook.com Deliverability Support <support@microsoft.com>\nSubject: RE: SRX1234567890ID\n\n{REFUSAL}");
    assert_eq!(
        classify_text(&raw).loop_risk.as_deref(),
        Some("null return path")
    );
    let raw = format!("{OURS}From: Outlook.com Deliverability Support <support@microsoft.com>\nTo: dana@colleague.example\nCc: postmaster@example.net\nSubject: RE: SRX1234567890ID\n\n{REFUSAL}");
    let v = classify_text(&raw);
    assert_eq!(v.kind, Kind::MsNotQualified);
    assert!(v.loop_risk.is_some_and(|r| r.contains("only copied")));
    let plain = ms(OURS, "RE: SRX1234567890ID", REFUSAL);
    assert_eq!(classify_text(&plain).loop_risk, None);
}

#[test]
fn a_request_for_data_outranks_the_team_it_names() {
    let body = "Hello,\n\nyour ticket is now with our Escalations Team. Before they can continue, please send us proof of IP ownership and the full headers of a rejected message.\n";
    let v = check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsInfoRequested,
        Some("SRX1234567890ID"),
        &[],
    );
    assert!(v
        .evidence
        .iter()
        .any(|e| e.rule.starts_with("info_requested")));
}

#[test]
fn a_lifted_block_that_recalls_the_refusal_is_resolved() {
    let body = "Hello,\n\nLast year we told you that 192.0.2.9 was not qualified for mitigation. After the review with our Escalations Team the block on 192.0.2.9 has now been lifted.\n";
    check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsResolved,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
}

#[test]
fn unblocking_under_a_daily_limit_is_conditional_without_the_keywords() {
    let body = "Hello,\n\n192.0.2.9 has been unblocked. For now it can deliver only a limited number of messages per day; the allowance grows with a good sending history.\n";
    check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsConditionallyMitigated,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
}

#[test]
fn an_answer_in_a_language_nobody_wrote_rules_for_goes_to_a_person() {
    // Finnish: "we checked the address; result: not eligible for mitigation".
    let body = "Hei,\n\ntarkistimme osoitteen huolellisesti.\n\nTulos\n192.0.2.9 | ei oikeutettu lieventämiseen\n\nYstävällisin terveisin\nTuki\n";
    let v = check(
        &ms(OURS, "RE: SRX1234567890ID", body),
        Kind::MsOther,
        Some("SRX1234567890ID"),
        &["192.0.2.9"],
    );
    assert!(v.uncertain.is_some(), "{:?}", v.evidence);
    assert!(v.confidence <= 0.5);
}

#[test]
fn a_learned_template_that_contradicts_clear_wording_is_uncertain() {
    let rules = Rules::builtin().expect("rules");
    let body = "Dear Dana,\n\nWe have implemented mitigation for 192.0.2.9. This process may take 24 - 48 hours to replicate completely throughout our system.\n";
    let raw = ms(OURS, "RE: SRX1234567890ID", body);
    let inbound = parse(raw.as_bytes(), Limits::default());
    let (own, _) = extract::split_own_text(&inbound.body, &rules);
    // Taught by mistake as a refusal: the wording clearly says the block was lifted.
    let wrong = learned::learn(Kind::MsNotQualified, &own, "mistake", 0);
    let v = classify_with(&inbound, &rules, &ctx(), None, &[wrong]);
    assert_eq!(v.kind, Kind::MsOther, "{:?}", v.evidence);
    assert!(v
        .uncertain
        .as_deref()
        .is_some_and(|u| u.contains("learned template")));
}

#[test]
fn a_refusal_after_a_finished_review_is_not_an_escalation_under_way() {
    let body = "Hello,\n\nOur escalation team has completed its review of 192.0.2.40. We are unable to provide mitigation for this IP at this time.\n";
    let v = check(
        &ms(OURS, "RE: SRX1234567891ID", body),
        Kind::MsNotQualified,
        Some("SRX1234567891ID"),
        &["192.0.2.40"],
    );
    assert!(v
        .evidence
        .iter()
        .any(|e| e.matched.contains("a finished review")));
    // An escalation under way is still one.
    let body = "Hello,\n\nWe have escalated your request to our Escalations Team, who will review it and get back to you.\n";
    check(
        &ms(OURS, "RE: SRX1234567891ID", body),
        Kind::MsEscalated,
        Some("SRX1234567891ID"),
        &[],
    );
}

#[test]
fn a_multi_line_reply_reads_on_across_its_lines() {
    let unfolded = unfold_reply(
        "550-5.7.1 [192.0.2.1] The IP you're using is not authorized to\n550-5.7.1 send email directly to our servers.\n550 5.7.1 Please use a relay. - gsmtp",
    );
    assert_eq!(
        normalize(&unfolded),
        "550-5.7.1 [192.0.2.1] The IP you're using is not authorized to send email directly to our servers. Please use a relay. - gsmtp"
    );
    // Whitespace of any width before a repeated code (hostile text) is no problem.
    assert_eq!(
        unfold_reply("550-5.7.1 a\u{a0}550-5.7.1 b\u{2003}550 5.7.1 c"),
        "550-5.7.1 a b c"
    );
    // Another code inside the text stays.
    assert_eq!(
        unfold_reply("451 4.7.1 see 550 5.7.1 below"),
        "451 4.7.1 see 550 5.7.1 below"
    );
}

#[test]
fn an_introduced_address_outranks_a_bare_dotted_code() {
    let text = "421 4.7.0 [TSS04] Messages from 192.0.2.8 temporarily deferred - 4.16.55.1; see";
    assert!(introduces(text, "192.0.2.8"));
    assert!(!introduces(text, "4.16.55.1"));
    assert!(introduces(
        "554 IP=192.0.2.9 - A problem occurred",
        "192.0.2.9"
    ));
}
