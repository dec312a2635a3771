//! HTML to the text a person sees: what a mail client would show, one line per block, table
//! rows on their own lines with their cells kept apart, hidden elements and style sheets left
//! out, entities decoded, inline markup (`not <b>qualified</b>`) leaving the words as written.

use html5gum::{DefaultEmitter, Token, Tokenizer};

/// Elements whose content is never shown.
const UNSHOWN: &[&[u8]] = &[
    b"style",
    b"script",
    b"head",
    b"title",
    b"template",
    b"noscript",
    b"svg",
    b"object",
];

/// Elements that start a new line.
const BLOCKS: &[&[u8]] = &[
    b"p",
    b"div",
    b"br",
    b"tr",
    b"li",
    b"h1",
    b"h2",
    b"h3",
    b"h4",
    b"h5",
    b"h6",
    b"table",
    b"tbody",
    b"thead",
    b"tfoot",
    b"blockquote",
    b"ul",
    b"ol",
    b"dl",
    b"dt",
    b"dd",
    b"hr",
    b"pre",
    b"section",
    b"article",
    b"header",
    b"footer",
    b"center",
    b"address",
    b"caption",
    b"form",
    b"fieldset",
    b"main",
    b"nav",
    b"aside",
    b"figure",
    b"figcaption",
];

/// Elements that have no end tag.
const VOID: &[&[u8]] = &[
    b"br", b"hr", b"img", b"meta", b"link", b"input", b"col", b"area", b"base", b"wbr", b"source",
    b"embed", b"param", b"track",
];

/// Renders an HTML document or fragment as text.
pub fn to_text(html: &str) -> String {
    let mut emitter = DefaultEmitter::default();
    // `<style>` and `<script>` hold raw text, not markup.
    emitter.naively_switch_states(true);
    let mut out = Text::default();
    // The element whose content is being skipped (hidden or never shown) and its nesting depth.
    let mut skipping: Option<(Vec<u8>, usize)> = None;
    let mut cells_in_row = 0usize;
    for token in Tokenizer::new_with_emitter(html, emitter).flatten() {
        match token {
            Token::StartTag(tag) => {
                let name = tag.name.to_ascii_lowercase();
                let void = tag.self_closing || VOID.contains(&name.as_slice());
                if let Some((skipped, depth)) = skipping.as_mut() {
                    if *skipped == name && !void {
                        *depth += 1;
                    }
                    continue;
                }
                let hidden = UNSHOWN.contains(&name.as_slice())
                    || tag.attributes.keys().any(|k| k.as_slice() == b"hidden")
                    || tag
                        .attributes
                        .iter()
                        .find(|(k, _)| k.as_slice() == b"style")
                        .is_some_and(|(_, v)| hides(&String::from_utf8_lossy(v)));
                if hidden && !void {
                    skipping = Some((name, 1));
                    continue;
                }
                match name.as_slice() {
                    b"tr" => {
                        cells_in_row = 0;
                        out.line_break();
                    }
                    b"td" | b"th" => {
                        if cells_in_row > 0 {
                            out.cell_break();
                        }
                        cells_in_row += 1;
                    }
                    n if BLOCKS.contains(&n) => out.line_break(),
                    _ => {}
                }
            }
            Token::EndTag(tag) => {
                let name = tag.name.to_ascii_lowercase();
                if let Some((skipped, depth)) = skipping.as_mut() {
                    if *skipped == name {
                        *depth -= 1;
                        if *depth == 0 {
                            skipping = None;
                        }
                    }
                    continue;
                }
                if BLOCKS.contains(&name.as_slice()) {
                    out.line_break();
                }
            }
            Token::String(text) if skipping.is_none() => {
                out.push(&String::from_utf8_lossy(&text));
            }
            _ => {}
        }
    }
    out.finish()
}

/// Whether an inline style hides its element (as preheaders and tracking blocks do).
fn hides(style: &str) -> bool {
    let compact: String = style
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    [
        "display:none",
        "visibility:hidden",
        "mso-hide:all",
        "max-height:0;",
        "max-height:0px",
    ]
    .iter()
    .any(|h| compact.contains(h))
        || compact.ends_with("max-height:0")
}

/// Text being assembled: white space inside a line collapsed, one line per block.
#[derive(Default)]
struct Text {
    out: String,
    /// A space is owed before the next word.
    space: bool,
}

impl Text {
    fn push(&mut self, text: &str) {
        for (i, word) in text
            .split(|c: char| c.is_whitespace() && c != '\u{a0}')
            .enumerate()
        {
            if i > 0 {
                self.space = true;
            }
            if word.is_empty() {
                continue;
            }
            if self.space && !self.out.is_empty() && !self.out.ends_with(['\n', ' ']) {
                self.out.push(' ');
            }
            self.space = false;
            self.out.push_str(word);
        }
    }

    fn line_break(&mut self) {
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        self.space = false;
    }

    fn cell_break(&mut self) {
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push_str(" | ");
        }
        self.space = false;
    }

    fn finish(self) -> String {
        let mut lines: Vec<&str> = Vec::new();
        for line in self.out.lines().map(str::trim) {
            if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
                continue;
            }
            lines.push(line);
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::to_text;

    #[test]
    fn tables_keep_rows_and_cells_apart() {
        let html = "<table><tr><th>IP address</th><th>Result</th></tr><tr><td>192.0.2.1</td><td>Not <b>qualified</b> for mitigation</td></tr></table>";
        assert_eq!(
            to_text(html),
            "IP address | Result\n192.0.2.1 | Not qualified for mitigation\n"
        );
    }

    #[test]
    fn hidden_elements_styles_and_comments_are_not_text() {
        let html = "<html><head><style>p { color: red }</style><title>T</title></head><body><div style=\"display: none; max-height:0\">preheader <span>x</span></div><!--[if mso]>mso<![endif]--><p>Visible&nbsp;text &amp; more</p><span hidden>no</span></body></html>";
        assert_eq!(to_text(html), "Visible\u{a0}text & more\n");
    }

    #[test]
    fn inline_markup_keeps_words_whole() {
        assert_eq!(to_text("SRX<b>1234</b>567890ID"), "SRX1234567890ID\n");
        assert_eq!(
            to_text("n'est <b>pas</b> <span>éligible</span><br>next"),
            "n'est pas éligible\nnext\n"
        );
    }
}
