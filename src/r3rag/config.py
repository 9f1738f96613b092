"""Configuration: one pydantic model per stage, YAML in and YAML out.

Every constant from the paper lives here, as a field whose default is the paper's value, with the source in
its description; code elsewhere reads it from a config and never inlines it. The CLI flags of a stage are
the fields of its config, and a run directory keeps the YAML of the config it ran with.

This module imports nothing else from r3rag, so every layer may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    """Base for every stage's config: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_yaml(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}"
            )
        return cls.model_validate(data)


QuestionType = Literal["compositional", "chain", "inference", "comparison", "bridge_comparison"]
Difficulty = Literal["easy", "standard", "hard"]


class WorldConfig(StageConfig):
    """The synthetic world: its size, its split, and the knobs that make its questions hard.

    Measured on this project's machine, SmolLM2-135M fine-tuned for three minutes on templated 2-hop questions
    about fictional entities reaches 94-100% accuracy: a world that easy leaves nothing for RL to learn. The
    ``standard`` default therefore mixes in 3- and 4-hop chains and two-chain comparisons, phrases every
    relation many ways, reuses names and titles, and puts other people's names in passages, so that a first
    query often misses and the policy has to notice and reformulate. ``r3rag data world --report`` measures
    how often a BM25 search with the gold sub-question finds the gold passage, per question type.
    """

    seed: int = Field(0, description="Everything in the world follows from this seed.")
    people: int = Field(700, ge=20, description="People, near-namesakes included; two passages each.")
    cities: int = Field(120, ge=8)
    countries: int = Field(24, ge=3)
    organisations: int = Field(160, ge=12, description="Film studios, publishers, record labels, companies.")
    works: int = Field(420, ge=12, description="Films, novels and albums.")
    train_questions: int = Field(1000, ge=0)
    dev_questions: int = Field(200, ge=0)
    namesake_rate: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Share of people who get a near-namesake (same first name, similar surname).",
    )
    title_echo_rate: float = Field(
        0.3, ge=0, le=1, description="Share of works whose title another work reuses with a small change."
    )
    mention_rate: float = Field(
        0.6, ge=0, le=1, description="Chance that a passage also names unrelated people (shared-name noise)."
    )
    paraphrase_variety: float = Field(
        1.0, ge=0, le=1, description="Share of the phrasings of each relation in use; 0 = one template each."
    )
    indirect_rate: float = Field(
        0.0, ge=0, le=1, description="Share of birth years stated only indirectly ('turned 40 in 1998')."
    )
    type_mix: dict[QuestionType, float] = Field(
        default_factory=lambda: {
            "compositional": 0.3,
            "chain": 0.2,
            "inference": 0.1,
            "comparison": 0.2,
            "bridge_comparison": 0.2,
        },
        description="Relative weights of question types; 'chain' are 3- and 4-hop compositional questions.",
    )

    @classmethod
    def for_difficulty(cls, difficulty: Difficulty, **overrides: Any) -> WorldConfig:
        """Presets: ``easy`` is the 2-hop templated world a cold start alone solves; ``hard`` adds more of
        everything that defeats a single query."""
        presets: dict[str, dict[str, Any]] = {
            "easy": {
                "namesake_rate": 0.0,
                "title_echo_rate": 0.0,
                "mention_rate": 0.0,
                "paraphrase_variety": 0.0,
                "type_mix": {"compositional": 1.0},
            },
            "standard": {},
            "hard": {
                "namesake_rate": 0.6,
                "title_echo_rate": 0.5,
                "mention_rate": 0.9,
                "indirect_rate": 0.1,
                "type_mix": {
                    "compositional": 0.15,
                    "chain": 0.3,
                    "inference": 0.15,
                    "comparison": 0.15,
                    "bridge_comparison": 0.25,
                },
            },
        }
        return cls(**{**presets[difficulty], **overrides})


class RewardConfig(StageConfig):
    """The R3-RAG hybrid reward per step (paper §3 and Fig. 2; official ``experience_maker.py``).

    A step in the wrong format gets ``format_reward``; the final-answer step gets the outcome reward; each
    retrieval step gets its relevance Rel in [0, 1] times lambda_T, a factor set by how the whole trajectory
    ended. Defaults are the paper's; :meth:`official` gives the released code's values.
    """

    mode: Literal["hybrid", "outcome", "process"] = Field(
        "hybrid",
        description="Which rewards are paid. hybrid: format + outcome + lambda_T x Rel (paper; official "
        "experience_maker.py). outcome: every valid step gets the trajectory's outcome reward, no Rel "
        "(official experience_maker_orm.py; paper Table 2 '- Process reward'). process: Rel unscaled on "
        "retrieval steps, 0 on the final step (official experience_maker_only_prm.py; not in the paper).",
    )
    format_reward: float = Field(
        -1.0,
        description="Reward of a step in the wrong format (paper Fig. 2: -1; official code: -0.9 = "
        "-1 x (1 - format_wrong_factor 0.1)).",
    )
    correct_reward: float = Field(
        2.0, description="Outcome reward of a correct final answer (paper Fig. 2; official code)."
    )
    wrong_reward: float = Field(
        0.0, description="Outcome reward of a wrong final answer (paper Fig. 2; official code)."
    )
    lambda_correct: float = Field(
        1.6, description="lambda_T = 1 + gamma_correct (0.6) when the answer is correct (paper §3, code)."
    )
    lambda_wrong: float = Field(
        0.8, description="lambda_T = 1 + gamma_incorrect (-0.2) when the answer is wrong (paper §3, code)."
    )
    lambda_out_of_steps: float = Field(
        0.9, description="lambda_T = 1 + gamma_fail (-0.1) when no answer came within the step budget."
    )
    lambda_format_error: float = Field(
        1.0, description="lambda_T when the trajectory ended in a format error: Rel unscaled (paper, code)."
    )
    round_digits: int | None = Field(
        None,
        ge=0,
        description="Round every reward to this many decimals (official code: 3; the paper does not round).",
    )

    @classmethod
    def official(cls, **overrides: Any) -> RewardConfig:
        """The released code's constants: format penalty -0.9 and rewards rounded to 3 decimals."""
        return cls(**{"format_reward": -0.9, "round_digits": 3, **overrides})


class JudgeConfig(StageConfig):
    """The paper's judges: answer correctness (Acc, the outcome) and document relevance (Rel, the process).

    Correctness is a string match first and then, if enabled, an LLM; relevance is an LLM or, offline, a
    reference judge (gold supporting passages, or embedding similarity to question + gold answer). The LLM
    fields describe an OpenAI-compatible endpoint (vLLM, SGLang, a hosted API) the caller builds a Generator
    for; any Generator, including a local model, can be passed to the judges instead.
    """

    correctness_match: Literal["em", "cover_em"] = Field(
        "em",
        description="The cheap match tried first: normalised exact match against every gold alias (paper "
        "evaluation and RL code) or cover-EM (a gold alias occurs in the answer as whole words).",
    )
    correctness_llm: bool = Field(
        True,
        description="Ask an LLM when the match fails: Acc = Acc_match or Acc_model (paper §3; "
        "Qwen2.5-14B-Instruct in RL, Qwen2.5-72B-Instruct at evaluation). Needs a Generator.",
    )
    relevance: Literal["llm", "reference"] = Field(
        "llm",
        description="Relevance judge: 'llm' (paper: Qwen2.5-14B-Instruct) or 'reference' (no LLM: share of "
        "gold supporting passages, else embedding similarity; our offline substitute).",
    )
    relevance_sees_step: bool = Field(
        False,
        description="Show the LLM relevance judge the step's analysis and query too (official code), not "
        "only the question and documents (paper).",
    )
    relevance_max_doc_chars: int | None = Field(
        512,
        ge=1,
        description="Cut each document to this many characters before judging (paper: documents are cut to "
        "512 characters in RL; the official code cuts the step's joined documents). None: no cut.",
    )
    relevance_fallback: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Rel used when the relevance judge cannot score a step (LLM failure; no gold and no "
        "encoder). Every use is counted in the judge's stats. The official code crashes instead.",
    )
    reference_match: Literal["auto", "id", "title"] = Field(
        "auto",
        description="How the reference judge recognises gold passages: by id, by title, or auto (ids when "
        "the example has any, else titles). Use 'title' when corpus ids differ from the dataset's.",
    )
    similarity_floor: float = Field(
        0.1,
        description="Reference judge without gold passages: cosine similarity mapped to Rel 0 (our choice; "
        "unrelated passages score about 0 with all-MiniLM-L6-v2).",
    )
    similarity_ceiling: float = Field(
        0.6,
        description="Cosine similarity mapped to Rel 1, linear in between (our choice; a passage stating "
        "the answer scores about 0.7 against question + answer with all-MiniLM-L6-v2).",
    )
    temperature: float = Field(
        0.0, ge=0.0, description="LLM judge sampling temperature (official correctness judge: 0)."
    )
    max_new_tokens: int = Field(
        512, ge=1, description="LLM judge output budget (official correctness judge: 512)."
    )
    cache_size: int = Field(100_000, ge=0, description="LLM judgements kept (LRU); 0 turns the cache off.")
    endpoint: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server for the LLM judges, e.g. http://host:8002/v1.",
    )
    model: str = Field(
        "Qwen/Qwen2.5-14B-Instruct", description="Judge model at the endpoint (paper: Qwen2.5-14B-Instruct)."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's API key."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout of the judge endpoint, in seconds.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed judge request (timeouts, 429, 5xx).")
    concurrency: int = Field(8, ge=1, description="Judge requests in flight at once.")


class BM25Config(StageConfig):
    """BM25 scoring and tokenisation (bm25s): stemming and stop-word removal on, as in the paper's BM25 index.

    The tokeniser settings are saved with the index and reused for queries, so a query is always split the
    way the passages were.
    """

    k1: float = Field(1.5, gt=0, description="Term-frequency saturation (bm25s default).")
    b: float = Field(0.75, ge=0, le=1, description="Length normalisation (bm25s default).")
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = Field(
        "lucene", description="bm25s variant."
    )
    stemmer: str | None = Field(
        "english", description="A PyStemmer algorithm name (Stemmer.algorithms()), or null for no stemming."
    )
    stopwords: Literal["en", "en_plus", "none"] | list[str] = Field(
        "en", description="bm25s's English list ('en'), its longer one ('en_plus'), 'none', or your own list."
    )
    lowercase: bool = True


class EncoderConfig(StageConfig):
    """A dense encoder and its conventions (prefixes, pooling, lengths): configuration, not code.

    ``model`` is a preset (``minilm``: the embedded all-MiniLM-L6-v2; ``e5``: intfloat/e5-base-v2; ``bge``:
    BAAI/bge-large-en-v1.5) or any sentence-transformers / Hugging Face path or name. ``conventions: auto``
    takes them from the preset, or from an ``e5`` / ``bge`` token in the model name, else the model's own
    (plain sentence-transformers). Explicit prefixes, pooling and lengths override the conventions.
    """

    model: str = Field("minilm", description="Preset (minilm, e5, bge) or a model path / Hugging Face name.")
    conventions: Literal["auto", "plain", "e5", "bge"] = "auto"
    query_prefix: str | None = Field(None, description="Text put before every query (E5: 'query: ').")
    passage_prefix: str | None = Field(None, description="Text put before every passage (E5: 'passage: ').")
    pooling: Literal["model", "mean", "cls"] | None = Field(
        None, description="'model' keeps the model's own pooling; E5 pools the mean, BGE the CLS token."
    )
    normalize: bool = Field(True, description="Unit-length embeddings, so inner product is cosine.")
    query_max_length: int | None = Field(None, ge=8, description="Query truncation in tokens (paper: 256).")
    passage_max_length: int | None = Field(
        None, ge=8, description="Passage truncation in tokens (paper: 512)."
    )
    batch_size: int = Field(64, ge=1, description="Texts per forward pass when encoding.")
    device: str = Field("cpu", description="torch device for the encoder.")
    bf16: bool = Field(
        True, description="bfloat16 autocast: about 3x faster passage encoding on CPUs with AVX-512 BF16/AMX."
    )


class DenseConfig(StageConfig):
    """Dense index: exact inner product (faiss Flat) by default, HNSW for corpora too large to scan."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW search breadth: higher is slower and more exact.")


class IndexBuildConfig(StageConfig):
    """``r3rag index build``: which corpus, which retriever, where the index folder goes."""

    corpus: Path = Field(description="Corpus jsonl (FlashRAG {id, contents} or {id, title, text}).")
    out: Path = Field(description="Index folder to write (replaced if it already holds an index).")
    retriever: Literal["bm25", "dense"] = "bm25"
    bm25: BM25Config = Field(default_factory=BM25Config)
    dense: DenseConfig = Field(default_factory=DenseConfig)


class RetrievalConfig(StageConfig):
    """Where a stage gets passages from: a local index folder or the URL of ``r3rag serve retriever``."""

    source: str = Field(description="An index folder, or an http(s):// URL of a retrieval server.")
    k: int = Field(5, ge=1, description="Passages per retrieval step (paper: top-5).")
    expect_corpus: Path | None = Field(None, description="Refuse a local index built from another corpus.")
    expect_encoder: str | None = Field(None, description="Refuse a local index built with another encoder.")
    n_threads: int = Field(0, ge=0, description="BM25: threads per batched search (0 = the calling thread).")
    device: str | None = Field(None, description="Dense: device for the query encoder (default: as built).")
    timeout_s: float = Field(60.0, gt=0, description="Server: seconds to wait for one response.")
    retries: int = Field(4, ge=0, description="Server: retries after a connection error or a 5xx.")
    backoff_s: float = Field(0.25, ge=0, description="Server: first retry delay; doubles on each retry.")


class RetrieverServerConfig(StageConfig):
    """``r3rag serve retriever``: address, request limits, micro-batching and cache."""

    host: str = Field("127.0.0.1", description="Loopback by default: the server has no authentication.")
    port: int = Field(8001, ge=0, le=65535, description="The official code's retriever port.")
    max_queries: int = Field(256, ge=1, description="Queries per request.")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    max_query_chars: int = Field(2000, ge=1, description="Longest query, in characters.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body.")
    max_batch_queries: int = Field(
        512, ge=1, description="Queries from concurrent requests searched in one call."
    )
    batch_wait_ms: float = Field(
        0.0, ge=0, description="Extra wait for requests before a search (they queue anyway while one runs)."
    )
    max_pending: int = Field(
        4096, ge=1, description="Requests waiting for a search before the server answers 503."
    )
    cache_size: int = Field(100_000, ge=0, description="LRU cache entries (query, k); 0 disables the cache.")


class AgentConfig(StageConfig):
    """The reason-retrieve loop (``r3rag ask``, evaluation, RL rollouts): budgets, documents and sampling.

    Defaults are the paper's evaluation setting (5 steps, top-5 documents, greedy decoding, untruncated
    documents). The RL rollout of the official code uses ``top_k=2``, ``max_doc_chars=512`` and temperatures
    0.1/0.4/0.7/1.0 per sample (passed per question to ``Agent.run``).
    """

    max_steps: int = Field(5, ge=1, description="Steps per question (paper and official code: 5).")
    top_k: int = Field(5, ge=1, description="Passages per retrieval (paper evaluation: 5; official RL: 2).")
    max_doc_chars: int | None = Field(
        None, ge=1, description="Cut each step's joined documents to this many characters (official RL: 512)."
    )
    dedup_passages: bool = Field(
        True, description="Skip passages already retrieved earlier in the same trajectory (official RL does)."
    )
    max_format_retries: int = Field(
        3, ge=0, description="Re-generations of a step whose format is invalid (official RL: 3)."
    )
    retry_temperature: float = Field(
        0.7,
        ge=0,
        description="Re-generations sample at least this hot (a greedy one would repeat the invalid step).",
    )
    force_answer: bool = Field(
        False,
        description="When the steps run out, ask once more for a final answer (the paper does not).",
    )
    force_answer_prompt: str = Field(
        "You have used all your retrieval steps. "
        "Write the next step with the problem analysis and the final answer.",
        description="Added to the user turn of the forced final step.",
    )
    system_prompt: str | None = Field(
        "You are a helpful assistant.",
        description="System turn of every prompt (the paper's SFT/RL prompt); None sends no system turn.",
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy (paper evaluation).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (official RL: 1.0).")
    max_new_tokens: int = Field(512, ge=1, description="Tokens per step (official code: 512).")
    stop: list[str] = Field(
        default_factory=lambda: ["The retrieval documents:"],
        description="Stop strings besides the next step's 'Step k:' header, which always stops a step.",
    )
    seed: int | None = Field(None, description="Sampling seed; each row, step and retry gets its own stream.")
    record_token_ids: bool = Field(
        False, description="Keep each step's prompt and completion token ids in the trajectory (for RL)."
    )
