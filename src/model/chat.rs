//! Chat formats: a prompt wrapped as one user turn, ready for the assistant's answer, in the
//! form the model's chat template (`tokenizer.chat_template`, Jinja) produces. The template is
//! recognised by its markers rather than executed: ChatML (`<|im_start|>`: Qwen, SmolLM2), with
//! the default system turn the template writes when none is given, and Gemma
//! (`<start_of_turn>`). BOS is left to the tokenizer, which adds it where the model expects it.

use crate::model::TextTokenizer;
use anyhow::{bail, Result};

/// A chat format recognised from a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\n…<|im_end|>\n` turns; the system turn the template adds when the
    /// conversation has none.
    ChatMl { default_system: Option<String> },
    /// `<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`.
    Gemma,
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

impl ChatFormat {
    /// The format of a chat template's source text.
    pub fn detect(template: &str) -> Result<ChatFormat> {
        if template.contains(IM_START) && template.contains(IM_END) {
            return Ok(ChatFormat::ChatMl {
                default_system: default_system(template),
            });
        }
        if template.contains("<start_of_turn>") && template.contains("<end_of_turn>") {
            return Ok(ChatFormat::Gemma);
        }
        let head: String = template.chars().take(120).collect();
        bail!(
            "the chat template is of a form unlearn does not know (it knows ChatML, with \
             `<|im_start|>`/`<|im_end|>`, and Gemma, with `<start_of_turn>`/`<end_of_turn>`); \
             it begins {head:?}"
        )
    }

    /// The format of a tokenizer's chat template; an error when it has none.
    pub fn of(tokenizer: &TextTokenizer) -> Result<ChatFormat> {
        match &tokenizer.chat_template {
            Some(t) => ChatFormat::detect(t),
            None => bail!(
                "the model has no chat template (GGUF `tokenizer.chat_template`, or \
                 `chat_template` in tokenizer_config.json); run without --chat"
            ),
        }
    }

    /// `prompt` as the only user turn, followed by the opening of the assistant's turn.
    pub fn user_turn(&self, prompt: &str) -> String {
        match self {
            ChatFormat::ChatMl { default_system } => {
                let system = default_system
                    .as_deref()
                    .map(|s| format!("{IM_START}system\n{s}{IM_END}\n"))
                    .unwrap_or_default();
                format!("{system}{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n")
            }
            ChatFormat::Gemma => {
                format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")
            }
        }
    }
}

/// The system message a ChatML template writes as a literal (`'<|im_start|>system\n…<|im_end|>'`)
/// when the conversation has no system turn of its own.
fn default_system(template: &str) -> Option<String> {
    let open = format!("{IM_START}system");
    template.match_indices(&open).find_map(|(i, _)| {
        let rest = &template[i + open.len()..];
        let rest = rest
            .strip_prefix("\\n")
            .or_else(|| rest.strip_prefix('\n'))?;
        let body = &rest[..rest.find(IM_END)?];
        // A literal message: no string quote or Jinja expression inside.
        let literal = !body.is_empty()
            && !body.contains(['\'', '"'])
            && !body.contains("{{")
            && !body.contains("{%");
        literal.then(|| body.replace("\\n", "\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The no-tools branch of the Qwen2.5 template (as stored in the GGUF, `\n` escaped).
    const QWEN: &str = r#"{%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}{%- for message in messages %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"#;

    #[test]
    fn chatml_with_the_templates_default_system_turn() {
        let f = ChatFormat::detect(QWEN).unwrap();
        assert_eq!(
            f.user_turn("Hi?"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(
            ChatFormat::detect(plain).unwrap().user_turn("x"),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_turns() {
        let t = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}";
        assert_eq!(
            ChatFormat::detect(t).unwrap().user_turn("Hi?"),
            "<start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn unknown_and_missing_templates_are_errors() {
        let e =
            ChatFormat::detect("{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}")
                .unwrap_err()
                .to_string();
        assert!(e.contains("ChatML") && e.contains("[INST]"), "{e}");
    }
}
