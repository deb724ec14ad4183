//! Chat templates: the Jinja programs that models ship (in `tokenizer_config.json` or in a GGUF's
//! `tokenizer.chat_template`) to turn a conversation into the text they were tuned on.
//!
//! Rendered with minijinja, configured as transformers configures Jinja for
//! `apply_chat_template` (blocks trimmed, Python string methods available, `raise_exception`).

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// ChatML, used when a model carries no template of its own.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' \
    + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A turn by `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// A conversation as the text a model continues, and the strings that end its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPrompt {
    /// The prompt text, ending where the assistant's answer begins.
    pub text: String,
    /// Text that marks the end of the answer beyond the model's own stop tokens.
    pub stop_strings: Vec<String>,
}

/// Formats `messages` for a model: with its chat template when it has one, otherwise as a plain
/// `User:` / `Assistant:` transcript (models trained without a chat format), which stops when
/// the model starts writing the next `User:` turn.
pub fn chat_prompt(template: Option<&ChatTemplate>, messages: &[Message]) -> Result<ChatPrompt> {
    if let Some(template) = template {
        return Ok(ChatPrompt {
            text: template.render(messages, true)?,
            stop_strings: Vec::new(),
        });
    }
    let mut text = String::new();
    for m in messages {
        let who = match m.role.as_str() {
            "user" => "User",
            "system" => "System",
            _ => "Assistant",
        };
        text.push_str(&format!("{who}: {}\n", m.content));
    }
    text.push_str("Assistant:");
    Ok(ChatPrompt {
        text,
        stop_strings: vec!["\nUser:".to_string()],
    })
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChatTemplate(bos={:?}, eos={:?})",
            self.bos_token, self.eos_token
        )
    }
}

fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the strings templates may refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| Error::Template(format!("rendering failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_without_a_template_gets_a_plain_transcript() {
        let messages = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ];
        let p = chat_prompt(None, &messages).unwrap();
        assert_eq!(p.text, "System: Be brief.\nUser: Hi\nAssistant:");
        assert_eq!(p.stop_strings, ["\nUser:"]);
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let p = chat_prompt(Some(&t), &messages[1..]).unwrap();
        assert!(p.text.ends_with("<|im_start|>assistant\n"), "{}", p.text);
        assert!(p.stop_strings.is_empty());
    }

    #[test]
    fn renders_chatml_with_a_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap_or_else(|e| panic!("{e}"));
        let text = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                true,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}\
                      {% endif %}{{ bos_token }}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap_or_else(|e| panic!("{e}"));
        let ok = t.render(&[Message::new("user", "  hi ")], false);
        assert_eq!(ok.ok().as_deref(), Some("<s>HI"));
        let err = t
            .render(&[Message::new("assistant", "x")], false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("user first"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
