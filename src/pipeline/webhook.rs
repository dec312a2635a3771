//! What a webhook receives: an operator notification as JSON, or as a chat message for Slack,
//! Microsoft Teams or Mattermost, and the HMAC-SHA256 signature of the exact bytes sent. The
//! notification's text can hold words a stranger wrote (a bounce's diagnostic, a subject): in
//! chat formats it is put in a code block with its fences broken and Slack's control
//! characters escaped, so it can neither format nor mention nor link.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::notify::WebhookFormat;

/// The header that carries the signature: `sha256=<hex>` of the body under the shared secret.
pub const SIGNATURE_HEADER: &str = "X-Postmaster-Bot-Signature";
/// The header that names the event; `X-Postmaster-Bot-Delivery` names the delivery (the same
/// on every retry of it, so a receiver can drop a repeat).
pub const EVENT_HEADER: &str = "X-Postmaster-Bot-Event";
pub const DELIVERY_HEADER: &str = "X-Postmaster-Bot-Delivery";

/// One notification, as every format is written from it.
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    pub event: &'a str,
    pub headline: &'a str,
    pub text: &'a str,
    pub case: Option<i64>,
    pub ticket: Option<&'a str>,
    pub ips: &'a [String],
    pub at: i64,
    pub mode: &'a str,
}

/// The body for a built-in format; `None` for a template, which the caller renders.
pub fn body(format: &WebhookFormat, event: &Event<'_>) -> Option<Vec<u8>> {
    let value = match format {
        WebhookFormat::Json => serde_json::json!({
            "source": "postmaster-bot",
            "event": event.event,
            "headline": event.headline,
            "text": event.text,
            "case": event.case,
            "ticket": event.ticket,
            "ips": event.ips,
            "at": event.at,
            "mode": event.mode,
        }),
        WebhookFormat::Slack => serde_json::json!({
            "text": format!(
                "*{}*\n```{}```",
                slack_escape(event.headline),
                slack_escape(&unfenced(event.text))
            ),
        }),
        WebhookFormat::Mattermost => serde_json::json!({
            "username": "postmaster-bot",
            "text": format!("**{}**\n```\n{}\n```", plain(event.headline), unfenced(event.text)),
        }),
        WebhookFormat::Teams => serde_json::json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "type": "AdaptiveCard",
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": plain(event.headline), "weight": "Bolder", "wrap": true},
                        {"type": "TextBlock", "text": format!("```\n{}\n```", unfenced(event.text)), "wrap": true, "fontType": "Monospace"}
                    ]
                }
            }]
        }),
        WebhookFormat::Template(_) => return None,
    };
    serde_json::to_vec(&value).ok()
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // NOTE: HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", crate::pipeline::parse::hex(&digest))
}

/// Text that cannot close a code block.
fn unfenced(text: &str) -> String {
    text.replace("```", "'''")
}

/// Slack reads `&`, `<` and `>` as the start of entities, links and mentions.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A headline without markdown emphasis or links.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if "*_`[]<>#|~".contains(c) { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(text: &'a str, ips: &'a [String]) -> Event<'a> {
        Event {
            event: "open_case",
            headline: "blocked by Microsoft: SRX1 (192.0.2.25) <!channel>",
            text,
            case: Some(4),
            ticket: Some("SRX1"),
            ips,
            at: 1_764_547_200,
            mode: "approve",
        }
    }

    #[test]
    fn each_format_is_json_and_a_stranger_s_words_cannot_format_mention_or_link() {
        let ips = vec!["192.0.2.25".to_string()];
        let hostile = "said: <!channel> <https://evil.example|click> ```\n*bold* @here";
        let e = event(hostile, &ips);
        let json: serde_json::Value =
            serde_json::from_slice(&body(&WebhookFormat::Json, &e).expect("json")).expect("parses");
        assert_eq!(json["event"], "open_case");
        assert_eq!(json["case"], 4);
        assert_eq!(json["text"], hostile, "JSON carries the text as it is");
        let slack: serde_json::Value =
            serde_json::from_slice(&body(&WebhookFormat::Slack, &e).expect("slack"))
                .expect("parses");
        let text = slack["text"].as_str().expect("text");
        assert!(
            !text.contains("<!channel>") && !text.contains("<https://"),
            "{text}"
        );
        assert_eq!(text.matches("```").count(), 2, "{text}");
        let mm: serde_json::Value =
            serde_json::from_slice(&body(&WebhookFormat::Mattermost, &e).expect("mattermost"))
                .expect("parses");
        assert_eq!(mm["text"].as_str().expect("text").matches("```").count(), 2);
        let teams: serde_json::Value =
            serde_json::from_slice(&body(&WebhookFormat::Teams, &e).expect("teams"))
                .expect("parses");
        assert_eq!(
            teams["attachments"][0]["content"]["type"], "AdaptiveCard",
            "{teams}"
        );
        assert!(body(&WebhookFormat::Template("x".into()), &e).is_none());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_exact_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
