//! The real backend: a loaded [`Engine`] with its chat template and tool-call format, its
//! replies decoded together on a continuous-batching [`Scheduler`].

use std::sync::Arc;

use crate::llm::backend::{Backend, ChatReply, ChatRequest, Constraint, Conversation, Usage};
use crate::llm::chat::ChatTemplate;
use crate::llm::constrain::Constrainer;
use crate::llm::engine::{Engine, GenerateRequest, Generation, LogitsProcessor};
use crate::llm::error::{LlmError, Result};
use crate::llm::model::KvCache;
use crate::llm::scheduler::{BatchStats, Job, Limits, Scheduler};
use crate::llm::tools::ToolFormat;

/// A model serving conversations.
pub struct LocalBackend {
    engine: Arc<Engine>,
    template: ChatTemplate,
    format: ToolFormat,
    name: String,
    constrainer: std::sync::OnceLock<Constrainer>,
    scheduler: std::sync::OnceLock<Scheduler>,
    limits: Limits,
}

impl LocalBackend {
    /// Wrap an engine; its chat template must compile.
    pub fn new(engine: Arc<Engine>) -> Result<Self> {
        let source = engine
            .chat_template()
            .ok_or_else(|| LlmError::Template("the model has no chat template".into()))?;
        let template = ChatTemplate::new(source, engine.bos_token(), engine.eos_token())?;
        let format = match engine.profile() {
            Some(p) => ToolFormat::from_name(&p.tool_format)?,
            None => ToolFormat::Hermes,
        };
        let name = engine
            .profile()
            .map(|p| p.name.clone())
            .unwrap_or_else(|| engine.path().display().to_string());
        Ok(LocalBackend {
            engine,
            template,
            format,
            name,
            constrainer: std::sync::OnceLock::new(),
            scheduler: std::sync::OnceLock::new(),
            limits: Limits::default(),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// llguidance set up for this model's tokenizer (built on first use).
    pub fn constrainer(&self) -> Result<&Constrainer> {
        if let Some(c) = self.constrainer.get() {
            return Ok(c);
        }
        // The model's declared end-of-turn token first: a grammar that ends on free text lets
        // only this one stop the reply (Qwen's <|im_end|>, not the lower-numbered
        // <|endoftext|> it never writes after an answer).
        let eos = self
            .engine
            .tokenizer()
            .eos()
            .filter(|id| self.engine.stop_tokens().contains(id))
            .or(self.engine.stop_tokens().first().copied())
            .ok_or_else(|| LlmError::Constraint("the model has no end-of-turn token".into()))?;
        let c = Constrainer::new(self.engine.tokenizer().clone(), eos)?;
        Ok(self.constrainer.get_or_init(|| c))
    }

    /// Run one job through the scheduler on the conversation's cache; the conversation keeps
    /// its previous cache if the job fails.
    fn run(
        &self,
        conversation: &mut Conversation,
        prompt: Vec<u32>,
        req: GenerateRequest,
        processor: Option<Box<dyn LogitsProcessor + Send>>,
    ) -> Result<Generation> {
        let cache: KvCache = conversation.take_state().unwrap_or_default();
        let keep = cache.clone();
        let (cache, result) = self.scheduler()?.generate(Job {
            cache,
            prompt,
            req,
            processor,
        })?;
        match result {
            Ok(g) => {
                let n = cache.len();
                conversation.put_state(cache, n);
                Ok(g)
            }
            Err(e) => {
                let n = keep.len();
                conversation.put_state(keep, n);
                Err(e)
            }
        }
    }

    /// The continuous-batching scheduler serving this backend (started on first use).
    fn scheduler(&self) -> Result<&Scheduler> {
        if let Some(s) = self.scheduler.get() {
            return Ok(s);
        }
        let s = Scheduler::new(self.engine.clone(), self.limits)?;
        Ok(self.scheduler.get_or_init(|| s))
    }

    /// Decode passes made for this backend's replies so far, and their batch sizes.
    pub fn batch_stats(&self) -> BatchStats {
        self.scheduler
            .get()
            .map(Scheduler::stats)
            .unwrap_or_default()
    }

    /// Serve with other batch limits than [`Limits::default`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The prompt text for a request (what the model will see).
    pub fn prompt(&self, request: &ChatRequest) -> Result<String> {
        self.render(request, true)
    }

    /// Render a request. xLAM-2 with a system message and tools gets the format instruction
    /// and the tools in its system message, as it was trained (its template would drop the
    /// instruction).
    fn render(&self, request: &ChatRequest, add_generation_prompt: bool) -> Result<String> {
        if self.format == ToolFormat::Xlam
            && !request.tools.is_empty()
            && request.messages.first().is_some_and(|m| m.role == "system")
        {
            let mut messages = request.messages.clone();
            messages[0].content =
                crate::llm::tools::xlam::system_prompt(&messages[0].content, &request.tools);
            return self.template.render(&messages, &[], add_generation_prompt);
        }
        self.template
            .render(&request.messages, &request.tools, add_generation_prompt)
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn reply(&self, conversation: &mut Conversation, request: &ChatRequest) -> Result<ChatReply> {
        let prompt = self.prompt(request)?;
        let ids = self.engine.tokenizer().encode(&prompt, true)?;
        let settings = GenerateRequest {
            max_tokens: request.max_tokens,
            sampling: request.sampling,
            stop: request.stop.clone(),
            ignore_eos: false,
        };
        let grammar = match &request.constraint {
            None => None,
            Some(Constraint::JsonSchema(schema)) => Some(self.constrainer()?.json_schema(schema)?),
            Some(Constraint::ToolCall) => {
                Some(self.constrainer()?.tool_call(self.format, &request.tools)?)
            }
            Some(Constraint::TextOrToolCall) => Some(
                self.constrainer()?
                    .text_or_tool_call(self.format, &request.tools)?,
            ),
            Some(Constraint::TextOrCallTo(tools)) => {
                Some(self.constrainer()?.text_or_tool_call(self.format, tools)?)
            }
            Some(Constraint::CallTo(tools)) => {
                Some(self.constrainer()?.tool_call(self.format, tools)?)
            }
            Some(Constraint::Regex(re)) => Some(self.constrainer()?.regex(re)?),
        };
        let g = self.run(
            conversation,
            ids,
            settings,
            grammar.map(|g| Box::new(g) as _),
        )?;
        conversation.count_turn();
        Ok(ChatReply {
            output: self.format.parse(&g.text),
            raw: g.text,
            finish: g.finish,
            usage: Usage {
                prompt_tokens: g.prompt_tokens,
                cached_tokens: g.cached_tokens,
                completion_tokens: g.ids.len(),
                prefill_ms: g.prefill_ms,
                decode_ms: g.decode_ms,
            },
        })
    }

    fn prime(&self, conversation: &mut Conversation, request: &ChatRequest) -> Result<()> {
        let prompt = self.render(request, false)?;
        let ids = self.engine.tokenizer().encode(&prompt, true)?;
        if ids.len() > 1 {
            let settings = GenerateRequest {
                max_tokens: 0,
                ..Default::default()
            };
            self.run(conversation, ids, settings, None)?;
        }
        Ok(())
    }
}
