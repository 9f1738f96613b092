"""Configuration: one pydantic model per stage, YAML in and YAML out.

Every constant from the paper lives here, as a field whose default is the paper's value, with the source in
its description; code elsewhere reads it from a config and never inlines it. The CLI flags of a stage are
the fields of its config, and a run directory keeps the YAML of the config it ran with.

This module imports nothing else from r3rag, so every layer may import it. The configs built from what lives
above it are there too: the eval config (one section per registered method) in :mod:`r3rag.evaluation.config`,
the quickstart's in :mod:`r3rag.pipeline_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StageConfig(BaseModel):
    """Base for every stage's config: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def yaml_text(self) -> str:
        """The config as YAML, fields in declaration order: what ``--config`` reads back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def to_yaml(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.yaml_text(), encoding="utf-8")

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


def device_field() -> Any:
    """The ``device`` setting of every stage that runs a model in its own process (r3rag.device)."""
    return Field(
        "auto",
        description="Where the model runs: auto (the first CUDA GPU if torch sees one, else the CPU), cpu, "
        "cuda or cuda:N. A GPU that is not there is an error, never a silent CPU run.",
    )


def bf16_field(what: str) -> Any:
    """The ``bf16`` setting of a stage that computes with a model on its own device (r3rag.device)."""
    return Field(
        None,
        description=f"{what} Default: on where the device computes bf16 natively (a GPU from Ampere on, a "
        "CPU with AVX-512 BF16 or AMX), fp32 elsewhere (emulated bf16 trained 16-26x slower than fp32 on an "
        "AVX2 CPU).",
    )


def gradient_checkpointing_field() -> Any:
    """The ``gradient_checkpointing`` setting of the stages that train a model."""
    return Field(
        None,
        description="Recompute activations in the backward pass: less memory, ~30% more compute. Default: "
        "on for models above 1B parameters.",
    )


def _default_type_mix() -> dict[QuestionType, float]:
    return {"compositional": 0.3, "chain": 0.2, "inference": 0.1, "comparison": 0.2, "bridge_comparison": 0.2}


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
    cities: int = Field(120, ge=8, description="Cities: birthplaces, headquarters, where works are set.")
    countries: int = Field(24, ge=3, description="Countries the cities are in.")
    organisations: int = Field(160, ge=12, description="Film studios, publishers, record labels, companies.")
    works: int = Field(420, ge=12, description="Films, novels and albums.")
    train_questions: int = Field(1000, ge=0, description="Training questions (train.jsonl).")
    dev_questions: int = Field(
        200,
        ge=0,
        description="Dev questions (dev.jsonl), starting from entities no train question starts from.",
    )
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
        default_factory=_default_type_mix,
        description="Relative weights of question types; 'chain' are 3- and 4-hop compositional questions.",
    )

    @staticmethod
    def difficulty_settings(difficulty: Difficulty) -> dict[str, Any]:
        """Presets: ``easy`` is the 2-hop templated world a cold start alone solves; ``standard`` the
        defaults; ``hard`` adds more of everything that defeats a single query."""
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
        return presets[difficulty]

    @classmethod
    def for_difficulty(cls, difficulty: Difficulty, **overrides: Any) -> WorldConfig:
        """The world of a :meth:`difficulty_settings` preset, with ``overrides``."""
        return cls(**{**cls.difficulty_settings(difficulty), **overrides})


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
    scale: Literal["step", "trajectory", "hops"] = Field(
        "step",
        description="What a trajectory's steps are paid together. step: each step's reward stands "
        "alone (paper; official code): each search earns lambda_T x Rel, and outcome mode pays the outcome "
        "on every valid step, so a trajectory's sum grows with its number of steps. trajectory: each search "
        "earns lambda_T x Rel / (retrieval steps) and outcome mode pays outcome / (valid steps) on each, so "
        "the sum is lambda_T x mean Rel plus the outcome, once: another step earns nothing by itself (for "
        "trajectory-level credit, rloo/grpo/gae-trajectory, which add the steps up; there the paper's sum "
        "pays a run of searches that never answers more than a short wrong answer). hops (ours): as "
        "trajectory, but Rel over max(retrieval steps, the question's gold hops), so the searches a "
        "question needs do not dilute each other and only searches beyond them do; under trajectory, a "
        "second search with Rel 0 halves the first one's pay (needs a gold decomposition).",
    )
    gold_recall: float = Field(
        0.0,
        ge=0.0,
        description="Weight of a reward for reaching the gold evidence (ours, not the paper's; 0: off): each "
        "retrieval step earns gold_recall x the share of the question's gold supporting passages that no "
        "earlier step retrieved, so a trajectory earns gold_recall x its recall of the gold passages, in "
        "every mode. Rel pays the precision of each search, so a trajectory that stops after its first hop "
        "can outscore one that goes on to the next; recall pays each further hop found. Needs gold "
        "supporting passages on every training question (HotpotQA, 2Wiki, MuSiQue, the synthetic world).",
    )
    bridge_queries: float = Field(
        0.0,
        ge=0.0,
        description="Weight of a reward for searching with each hop's answer (ours, not the paper's; 0: "
        "off): each retrieval step earns bridge_queries x the share of the question's bridge entities "
        "(answers of its gold hops that a later hop asks about) that its query names and no earlier query "
        "did, so a trajectory earns bridge_queries x the share of the chain it walked. The next hop of a "
        "chain can be searched only by the entity the previous one found; passage recall also pays a first "
        "search that finds the right page with the wrong question. Needs a gold decomposition on every "
        "training question (2Wiki, MuSiQue, the synthetic world); questions without bridges (comparisons) "
        "earn none.",
    )
    search_bonus_needs_answer: bool = Field(
        False,
        description="Pay the search bonus (gold_recall, bridge_queries) only on trajectories that end with "
        "an answer, right or wrong (ours). Each search is another chance to name a bridge or reach a gold "
        "passage first, so with the bonus paid on every trajectory one that searches until its steps run "
        "out can outearn one that answers; a run can learn to search on. Needs a bonus weight.",
    )
    round_digits: int | None = Field(
        None,
        ge=0,
        description="Round every reward to this many decimals (official code: 3; the paper does not round).",
    )

    @model_validator(mode="after")
    def _withheld_bonus_needs_a_bonus(self) -> Self:
        if self.search_bonus_needs_answer and not self.pays_search_bonus:
            raise ValueError(
                "reward.search_bonus_needs_answer withholds the search bonus, but none is paid: set "
                "reward.gold_recall or reward.bridge_queries above 0"
            )
        return self

    @property
    def pays_search_bonus(self) -> bool:
        """Whether retrieval steps earn a bonus beyond Rel (ours: ``gold_recall``, ``bridge_queries``)."""
        return bool(self.gold_recall or self.bridge_queries)

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
        description="How gold passages are recognised (reference judge, gold recall, oracle): by id, by "
        "normalised title, or auto, decided once against the index: ids when it holds every gold passage id "
        "of the questions, else titles. 'id' with none of a question file's ids in the index is an error.",
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
    timeout_s: float = Field(
        60.0, gt=0, description="Seconds a judge request may take in all before it is abandoned and retried."
    )
    max_retries: int = Field(
        6,
        ge=0,
        description="Retries of a failed judge request (connection errors, timeouts, 408/409/429, 5xx), with "
        "exponential backoff or the wait its Retry-After asks for.",
    )
    backoff_s: float = Field(
        1.0, ge=0, description="First wait before a retry; doubled at each retry (jittered)."
    )
    concurrency: int = Field(64, ge=1, description="Judge requests in flight at once.")


JUDGE_CALL_FIELDS = ("timeout_s", "max_retries", "backoff_s", "concurrency")
"""JudgeConfig fields that say how its endpoint is called, not what it answers: a resumed run may change
them."""


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
    lowercase: bool = Field(True, description="Lowercase passages and queries before tokenising.")


class EncoderConfig(StageConfig):
    """A dense encoder and its conventions (prefixes, pooling, lengths): configuration, not code.

    ``model`` is a preset (``minilm``: the embedded all-MiniLM-L6-v2; ``e5``: intfloat/e5-base-v2; ``bge``:
    BAAI/bge-large-en-v1.5) or any sentence-transformers / Hugging Face path or name. ``conventions: auto``
    takes them from the preset, or from an ``e5`` / ``bge`` token in the model name, else the model's own
    (plain sentence-transformers). Explicit prefixes, pooling and lengths override the conventions.
    """

    model: str = Field("minilm", description="Preset (minilm, e5, bge) or a model path / Hugging Face name.")
    conventions: Literal["auto", "plain", "e5", "bge"] = Field(
        "auto", description="Prefixes, pooling and lengths: from the preset or model name (auto), or named."
    )
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
    device: str = device_field()
    bf16: bool | None = bf16_field(
        "bfloat16 autocast: about 3x faster passage encoding on CPUs with AVX-512 BF16/AMX."
    )
    fp16: bool = Field(
        False, description="float16 weights (GPUs; wins over bf16): half the memory, faster on GPUs."
    )
    devices: list[str] = Field(
        default_factory=list,
        description="Two or more devices (cuda:0 cuda:1 ...) encode passages in parallel with "
        "sentence-transformers' multi-process pool; queries stay on `device`.",
    )


class DenseConfig(StageConfig):
    """Dense index: a faiss index over fp16 passage embeddings, built in chunks that survive an interruption.

    ``index`` is ``flat`` (exact inner product, the paper's E5/BGE indexes), ``hnsw`` (HNSW with ``hnsw_m``
    neighbours), or any ``faiss.index_factory`` string (``HNSW32``, ``IVF4096,PQ64``, ``SQ8``,
    ``IVF65536,SQfp16``...): docs/retrieval.md gives the memory each takes at 21M passages.
    """

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    index: str = Field(
        "flat",
        description="faiss index: flat (exact inner product), hnsw (approximate), or a faiss.index_factory "
        "string such as 'IVF4096,PQ64', 'HNSW32' or 'SQ8'.",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (index: hnsw).")
    hnsw_ef_construction: int = Field(
        200, ge=8, description="HNSW build breadth: higher is slower and better."
    )
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW search breadth: higher is slower and more exact.")
    nprobe: int = Field(
        32, ge=1, description="IVF indexes: lists searched per query (more is slower, exacter)."
    )
    train_size: int = Field(
        262_144, ge=1, description="IVF/PQ/SQ indexes: passages sampled (seeded) to train on."
    )
    chunk_size: int = Field(
        32_768,
        ge=1,
        description="Passages encoded, written to disk and added to the index at a time; an interrupted "
        "build resumes after the last chunk written.",
    )
    gpu: Literal["auto", "on", "off"] = Field(
        "auto",
        description="faiss on GPUs (training and search) when faiss-gpu is installed and a GPU is visible "
        "(auto); on: refuse to run without; off: CPU only.",
    )


class IndexBuildConfig(StageConfig):
    """``r3rag index build``: which corpus, which retriever, where the index folder goes."""

    corpus: Path = Field(description="Corpus jsonl (FlashRAG {id, contents} or {id, title, text}).")
    out: Path = Field(description="Index folder to write (replaced if it already holds an index).")
    retriever: Literal["bm25", "dense"] = Field(
        "bm25", description="bm25 (bm25s) or dense (an encoder + faiss)."
    )
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
    api_key_env: str | None = Field(
        "R3RAG_RETRIEVER_API_KEY",
        min_length=1,
        description="Server: environment variable whose value, when set and non-empty, is sent as "
        "`Authorization: Bearer <key>` (the server's --api-key-env); None sends no key.",
    )


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class ServerAccessConfig(StageConfig):
    """Who may reach an HTTP server of r3rag (the retriever's, the agent's): address, Host names, API key."""

    host: str = Field(
        "127.0.0.1",
        description="Interface to listen on. Loopback by default; any other logs a warning at startup.",
    )
    port: int = Field(8001, ge=0, le=65535, description="The official code's retriever port.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names answered besides 127.0.0.1, localhost, [::1] and the bound host; "
        "others get 400 (no DNS rebinding from a web page). '*' allows any, '*.example.com' its subdomains.",
    )
    api_key_env: str | None = Field(
        None,
        min_length=1,
        description="Environment variable holding an API key: every request (/health included) must then "
        "send `Authorization: Bearer <key>` (401 otherwise). An unset or empty variable stops the start.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            bare = host.removeprefix("*.")
            ipv6 = bare.startswith("[") and bare.endswith("]")  # [::1]
            if (
                host != "*"
                and not ipv6
                and (not bare or "*" in bare or any(c.isspace() or c in "/@:" for c in bare))
            ):
                raise ValueError(
                    f"{host!r} is not a host name, an IP address ([::1] for IPv6), '*' or '*.domain', "
                    "without a port"
                )
        return hosts


class RetrieverServerConfig(ServerAccessConfig):
    """``r3rag serve retriever``: address, access, request limits, micro-batching and cache."""

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
    cache_max_bytes: int = Field(
        256 << 20,
        ge=0,
        description="LRU cache bytes (each entry's query and JSON answer, plus overhead); 0 disables it.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes on the port, each with its own batcher and cache; the index is "
        "memory-mapped, so they share one copy of it.",
    )


AGENT_FILE = "agent.yaml"
"""The AgentConfig a trained model's folder carries (SFT and PPO write it): the settings to run it with."""


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
    record_logprobs: bool = Field(
        False,
        description="With `record_token_ids`: also each completion token's log-probability at temperature 1, "
        "as the decode computed it (PPO's `old_logprobs: rollout`).",
    )


class GeneratorConfig(StageConfig):
    """The language model a command runs (``ask``, ``eval``, the LLM teacher of ``coldstart``): a local model,
    or a model served by an OpenAI-compatible endpoint (vLLM, SGLang, DeepSeek, ...)."""

    model: str = Field(
        "smollm2-135m-instruct",
        description="smollm2-135m-instruct (embedded), a model folder, a .gguf or a hub id; with --base-url, "
        "the model's name at the endpoint.",
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible server of the model, e.g. http://localhost:8000/v1."
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's key.")
    concurrency: int = Field(64, ge=1, description="Requests to the endpoint in flight at once.")
    timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds one request to the endpoint may take in all; a request still unanswered then is "
        "abandoned and retried.",
    )
    retries: int = Field(
        6,
        ge=0,
        description="Retries of a failed request to the endpoint (connection errors, timeouts, 408/409/429, "
        "5xx), with exponential backoff or the wait its Retry-After asks for. A question whose call still "
        "fails is recorded as failed, and a rerun retries it.",
    )
    backoff_s: float = Field(
        1.0, ge=0, description="First wait before a retry; doubled at each retry (jittered)."
    )
    questions_in_flight: int | None = Field(
        None,
        ge=1,
        description="Endpoint: questions worked on at once, each on its own (a crash redoes at most these); "
        "None: twice the concurrency, so a request is ready whenever a slot frees.",
    )
    device: str = device_field()
    bf16: bool | None = bf16_field("Local model: its weights in bf16 (half the memory, faster generation).")

    def in_flight(self) -> int:
        """Questions worked on at once through the endpoint."""
        return self.questions_in_flight or 2 * self.concurrency


# ------------------------------------------------------------------------------------------------ cold start


def _policy_agent() -> AgentConfig:
    """The rollout settings of the official RL code: the cold start should train for the prompts RL shows."""
    return AgentConfig(top_k=2, max_doc_chars=512)


class OracleConfig(StageConfig):
    """The oracle teacher: trajectories from gold decompositions, checked against the real retriever."""

    max_queries_per_hop: int = Field(
        3,
        ge=1,
        description="Searches a hop may take: its sub-question, then reformulations after a miss (our "
        "choice; a trajectory whose hop is still not found is not kept).",
    )
    skip_found_hops: bool = Field(
        True,
        description="Do not search for a hop whose passage an earlier search already brought (our choice: "
        "the analysis says the fact is already known).",
    )
    seed: int = Field(0, description="Seeds the choice of phrasings; each question gets its own stream.")


class ColdStartConfig(StageConfig):
    """``r3rag coldstart``: expert trajectories from a teacher, filtered, and the SFT dataset built from them.

    ``agent`` is the policy's inference setting. The teacher retrieves with it (``top_k``, ``dedup_passages``,
    ``max_doc_chars``: the teacher sees exactly the documents the policy will see) and the SFT prompts are
    rendered with it (``system_prompt``, ``max_doc_chars``), so R3-RAG-CS must later be run with the same
    values. Its defaults are the official RL rollout's (top-2 passages, 512 characters per step, 5 steps).
    """

    teacher: Literal["oracle", "llm"] = Field(
        "oracle",
        description="oracle: gold decompositions + the real retriever (offline); llm: any Generator with our "
        "teacher prompt (paper: DeepSeek-V3), filtered by the correctness judge.",
    )
    agent: AgentConfig = Field(default_factory=_policy_agent)
    attempts: int = Field(
        7, ge=1, description="LLM teacher: attempts per question (official num_attempts_one_question = 7)."
    )
    first_temperature: float = Field(
        0.0, ge=0, description="LLM teacher: temperature of the first attempt (official: 0, greedy)."
    )
    retry_temperature: float = Field(
        0.9, ge=0, description="LLM teacher: temperature of the later attempts (official: 0.9)."
    )
    teacher_max_steps: int | None = Field(
        None,
        ge=1,
        description="Steps per teacher attempt; None: the policy's agent.max_steps (paper Alg. 1: 5; the "
        "official generation code uses 7, but the policy cannot finish a longer trajectory).",
    )
    format_retries: int = Field(
        1,
        ge=0,
        description="LLM teacher: re-prompts of a malformed step (official num_attempts_one_generation = 2, "
        "i.e. one re-prompt).",
    )
    teacher_max_new_tokens: int = Field(
        256, ge=1, description="LLM teacher: tokens per step (official generation code: max_tokens=256)."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Local teacher: questions in one lockstep Agent batch (a crash loses at most these). "
        "Through an endpoint each question runs on its own; --questions-in-flight bounds them.",
    )
    judge: JudgeConfig = Field(
        default_factory=lambda: JudgeConfig(correctness_llm=False),
        description="Correctness judge of the LLM teacher's answers (paper: the teacher itself, DeepSeek-V3; "
        "here a match against every gold alias unless correctness_llm is on).",
    )
    oracle: OracleConfig = Field(default_factory=OracleConfig)


class SFTConfig(StageConfig):
    """``r3rag sft``: fine-tune a causal LM on the cold-start step examples (the paper's R3-RAG-CS).

    Defaults are the official LLaMA-Factory recipe for Llama-3.1-8B (``llama3_full_sft_llama.yaml``); a
    135M model on a CPU wants a higher learning rate and fewer epochs (see the README's measured run).
    """

    data: Path = Field(description="SFT examples jsonl written by `r3rag coldstart` (chat messages).")
    out: Path = Field(description="Run folder: config.yaml, log.jsonl, checkpoints/, final/.")
    model: str = Field(
        "smollm2-135m-instruct", description="Starting model: the embedded default, a folder, .gguf, hub id."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training examples (official: 3).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps instead (schedules follow it)."
    )
    max_examples: int | None = Field(
        None, ge=1, description="Train on a random subset of this many training examples (a time budget)."
    )
    learning_rate: float = Field(
        1e-5, gt=0, description="Peak learning rate (official: 1e-5 for Llama-3.1-8B, 7e-6 for Qwen2.5-7B)."
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of steps with linear warmup (official: 0.1)."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Cosine decays to this share of the peak (official: cosine to 0)."
    )
    share_prefixes: bool = Field(
        True,
        description="Compute the step examples of one trajectory in one row, sharing the prompt they have in "
        "common: the same loss, ~1.7x fewer tokens. micro_batch_size then counts trajectories (3.7 examples "
        "each in the default world's cold-start data).",
    )
    micro_batch_size: int = Field(
        2,
        ge=1,
        description="Rows per forward pass: examples, or trajectories with share_prefixes (official "
        "Llama: 2 examples).",
    )
    grad_accum: int = Field(
        4, ge=1, description="Micro-batches per optimizer step (official Llama: 4; paper: batch size 8)."
    )
    max_length: int = Field(
        4096, ge=16, description="Longest example in tokens (official cutoff_len: 4096); longer are dropped."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (LLaMA-Factory default: 0).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping (LLaMA-Factory default: 1.0).")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of questions held out for the eval loss (official val_size: 0.1)."
    )
    eval_every: int = Field(500, ge=1, description="Optimizer steps between eval losses (official: 500).")
    save_every: int = Field(200, ge=1, description="Optimizer steps between checkpoints (official: 200).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    device: str = device_field()
    bf16: bool | None = bf16_field(
        "bf16 mixed precision (official: bf16): forward passes under bf16 autocast, trained weights in fp32; "
        "a LoRA run's frozen base is loaded in bf16."
    )
    gradient_checkpointing: bool | None = gradient_checkpointing_field()
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads (default: torch's, one per core). On a CPU shared with other jobs, "
        "fewer threads than cores avoid waiting on descheduled ones (measured here: 1 thread 2.7x faster "
        "than 2 on 2 busy cores).",
    )
    seed: int = Field(42, description="Shuffling, the held-out split and initialisation of LoRA weights.")
    fsdp: bool = Field(
        False,
        description="With several processes (torchrun), shard weights, gradients and optimizer states over "
        "them (FSDP2), for a full fine-tune that does not fit one GPU; without it each has the whole model.",
    )
    lora: bool = Field(False, description="Train LoRA adapters (needs peft) instead of all weights.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank (our default).")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (our default: 2 x rank).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout (our default).")
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters: peft's 'all-linear' or a list of names."
    )

    @model_validator(mode="after")
    def _fsdp_is_for_full_fine_tunes(self) -> Self:
        if self.fsdp and self.lora:
            raise ValueError(
                "fsdp shards a full fine-tune; a LoRA run fits one GPU: drop fsdp (several processes then "
                "split the batches, each with the whole model)"
            )
        return self


# ------------------------------------------------------------------------------------------------------- PPO


def _paper_temperatures() -> list[float]:
    """The official rollout's temperature of a question's i-th sample: 0.1 + 0.3 i."""
    return [0.1, 0.4, 0.7, 1.0]


def _rollout_agent() -> AgentConfig:
    """The official RL rollout: top-2 passages, each step's documents cut to 512 characters, 5 steps."""
    return AgentConfig(top_k=2, max_doc_chars=512)


def _train_types_field() -> Any:
    """``train_types`` of the in-process trainer and of veRL's prepare: one description for both."""
    return Field(
        default_factory=list,
        description="Train on the questions of these types only (their `type`: the world's compositional, "
        "chain, inference, comparison, bridge_comparison; HotpotQA's bridge, comparison); empty: all. Ours; "
        "measured on a CPU: RL on the reading types alone gained on them, lost the others (docs/results.md).",
    )


VerlAdvantage = Literal["gae", "gae-trajectory", "rloo", "grpo"]
"""The credit schemes that run on veRL too (``VerlPrepareConfig``, ``VerlLoopConfig``): veRL's GRPO compares
whole trajectories, so a baseline per step of the group has no veRL estimator to take it."""
Advantage = Literal[VerlAdvantage, "rloo-to-go"]
"""How a step is credited (``PPOConfig.advantage``)."""
CRITIC_FREE: frozenset[str] = frozenset({"rloo", "grpo", "rloo-to-go"})
"""Advantages whose baseline is the question's other samples: no value is learned, no critic is built."""
TRAJECTORY_BASELINES: frozenset[str] = frozenset({"rloo", "grpo"})
"""Critic-free advantages of the whole trajectory: a question whose returns tie gets 0 on every step."""


def refuse_kl_target_without_beta(kl_target: float | None, kl_coef: float) -> None:
    """An adaptive KL controller (ours, veRL's) multiplies beta by a factor per iteration, starting from
    ``kl_coef``: from 0 it would stay at 0, so a KL target with no first beta is a mistake, not a setting."""
    if kl_target is not None and kl_coef == 0:
        raise ValueError(
            "kl_target adapts beta from kl_coef by a factor per iteration, so kl_coef 0 would keep it at "
            "0: set kl_coef > 0 (its first and smallest value), or drop kl_target for no KL penalty"
        )


def refuse_uniform_groups_without_trajectory_baselines(skip_uniform_groups: bool, advantage: str) -> None:
    """A question whose trajectories tie has a zero advantage only against its group; under GAE the value
    gives each step its own, so leaving the question out would drop signal, not cost."""
    if skip_uniform_groups and advantage not in TRAJECTORY_BASELINES:
        raise ValueError(
            "skip_uniform_groups needs a baseline of whole trajectories (advantage rloo or grpo), not "
            f"{advantage!r}"
        )


class PPOConfig(StageConfig):
    """``r3rag train``: PPO with the hybrid reward, from the cold-start model (R3-RAG-CS) to R3-RAG.

    Defaults are the official run (``examples/RLHF.sh`` on OpenRLHF 0.5.7, reference §1.5) where it has a
    value, else OpenRLHF's defaults it ran with. :meth:`small_model` is the preset for a ~100M model on a CPU
    (the embedded SmolLM2): learning rates scaled up and a smaller rollout per iteration (see its docstring).
    """

    model: str = Field(description="The cold-start policy R3-RAG-CS: a model folder (or any model name).")
    train: Path = Field(description="Training questions (FlashRAG jsonl or any dataset r3rag reads).")
    train_types: list[str] = _train_types_field()
    index: str = Field(description="Index folder, or the URL of `r3rag serve retriever`.")
    out: Path = Field(description="Run folder: config.yaml, metrics.jsonl, curve.png, checkpoints/, final/.")
    dev: Path | None = Field(None, description="Dev questions for the periodic greedy evaluation.")
    rollout: AgentConfig = Field(
        default_factory=_rollout_agent,
        description="Agent settings of rollouts and dev evaluations (official RL: top-2, 512 characters). "
        "Use the values R3-RAG-CS was trained with.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)
    judges: JudgeConfig = Field(
        default_factory=lambda: JudgeConfig(correctness_llm=False, relevance="reference"),
        description="Offline by default: exact match against every alias, gold-passage relevance (the paper "
        "uses Qwen2.5-14B-Instruct for both; point `endpoint` at one and switch them on).",
    )
    iterations: int = Field(
        512,
        ge=1,
        description="Rollout + update rounds (official: 4 episodes x 8,192 questions / 64 per rollout).",
    )
    questions_per_iteration: int = Field(64, ge=1, description="Questions per rollout (official: 64).")
    balance_sides: bool = Field(
        False,
        description="Follow every two-way question, at its type's next place in the shuffle, by one of its "
        "type that the other side answers (first/second, yes/no; `metadata.side` or a yes/no answer), so no "
        "iteration rewards a side whatever the question. Ours (r3rag.rl.draws); off: the plain shuffle.",
    )
    samples_per_question: int = Field(
        4, ge=1, description="Trajectories per question (official n_samples_per_prompt: 4)."
    )
    temperatures: list[float] = Field(
        default_factory=_paper_temperatures,
        min_length=1,
        description="Temperature of the i-th trajectory of a question, cycled (official: 0.1 + 0.3 i).",
    )
    shuffle_sentences: bool = Field(
        False,
        description="Reorder the sentences of every passage the rollout retrieves, in an order drawn per "
        "passage and iteration (ours; r3rag.retrieval.shuffled), so where a fact sits in its passage says "
        "nothing and the reward pays only reading the sentence that holds it. Dev evaluations read passages "
        "as they are. Off: passages as the index holds them (official).",
    )
    critic: Literal["separate", "shared"] = Field(
        "separate",
        description="separate: the critic is a copy of the actor with a value head (official). shared: a "
        "value head on the actor's trunk (our low-cost option: one pass instead of two; a deviation).",
    )
    vf_coef: float = Field(
        0.5,
        ge=0,
        description="shared critic: weight of the value loss in the trunk's gradient (CleanRL's 0.5). A "
        "separate critic trains on the value loss alone.",
    )
    lora_rank: int = Field(
        0, ge=0, description="Train the actor through LoRA adapters of this rank; 0: all weights (official)."
    )
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (our default: 2 x rank 8).")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get adapters (Llama/Qwen/SmolLM names).",
    )
    kl_coef: float = Field(
        0.01,
        ge=0,
        description="beta of the per-token KL penalty (official init_kl_coef 0.01, fixed); with `kl_target`, "
        "its first and smallest value (so > 0 with it). 0: no penalty, so no reference model is kept and "
        "its log-prob pass and the `ppo/kl` metrics go.",
    )
    kl_target: float | None = Field(
        None,
        gt=0,
        description="Adapt beta after every iteration towards this mean KL per action token (Ziegler et "
        "al. 2019's controller, veRL's kl_ctrl.type adaptive): up while the policy is further from the cold "
        "start, back down to `kl_coef` at least while nearer. None: beta stays `kl_coef` (official).",
    )
    kl_horizon: float = Field(
        16.0,
        gt=0,
        description="With `kl_target`: samples over which beta moves by at most 20% (veRL's kl_ctrl.horizon, "
        "10,000 there, for batches of thousands; here an iteration's ~50 step-samples move it by up to 60%, "
        "so that a run of tens of iterations can raise it tenfold).",
    )
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="Per-token KL estimator (official: k1, log pi - log pi_ref; k3 is never negative)."
    )
    advantage: Advantage = Field(
        "gae",
        description="How a step is credited. gae: its own reward, a learned value, GAE (official). "
        "gae-trajectory: its reward plus every later step's (returns-to-go over the trajectory), GAE. "
        "rloo / grpo: critic-free; the trajectory's return against its question's other samples (leave-one-"
        "out mean; group mean and std) on every step, no value learned (`critic` unused). rloo-to-go: "
        "critic-free; each step's reward-to-go against the other samples' at the same step (0 once they "
        "ended). Ours; not on veRL.",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount within a step-sample (official: 1.0).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda (official: 1.0).")
    normalize_advantages: bool = Field(
        True, description="Whiten advantages over the rollout buffer (OpenRLHF does)."
    )
    skip_uniform_groups: bool = Field(
        False,
        description="rloo / grpo: leave out of the update every question whose trajectories all got the same "
        "return (their advantage is zero: without a KL penalty they add no gradient, only its cost). DAPO's "
        "dynamic-sampling filter, without its re-sampling. Off: every trajectory is updated on (official).",
    )
    old_logprobs: Literal["recompute", "rollout"] = Field(
        "recompute",
        description="pi_old of the ratio. recompute: a pass over the rollout's samples before the update "
        "(official). rollout: the log-probs the decode computed while sampling (temperature 1), no pass for "
        "rloo / grpo; exact up to the rounding of a cached decode against a full pass, so for fp32.",
    )
    clip_ratio: float = Field(0.2, gt=0, description="PPO ratio clip epsilon (official eps_clip: 0.2).")
    value_clip: float = Field(
        0.2, gt=0, description="Value clip around the rollout's values (official: 0.2)."
    )
    ent_coef: float = Field(0.0, ge=0, description="Entropy bonus (OpenRLHF has none; entropy is logged).")
    ptx_data: Path | None = Field(
        None,
        description="SFT examples (the cold start's sft.jsonl) whose loss joins every actor update, weighted "
        "by `ptx_coef` (InstructGPT's PPO-ptx; OpenRLHF's --pretrain_data): keeps the cold start's steps on "
        "the questions no rollout sampled. None: PPO's loss alone (official).",
    )
    ptx_types: list[str] = Field(
        default_factory=list,
        description="With `ptx_data`: its examples of questions of these types only (each record's `type`); "
        "empty: all. Ours, to pair with `train_types`: RL on some types, the cold start's loss holding the "
        "others.",
    )
    ptx_coef: float = Field(
        0.05,
        ge=0,
        description="With `ptx_data`: weight of its loss (mean NLL per target token) in each optimizer "
        "step (OpenRLHF's ptx_coef default).",
    )
    ptx_questions: int = Field(
        2,
        ge=1,
        description="With `ptx_data`: questions drawn per optimizer step, each with all its step examples "
        "(one row sharing their prompts).",
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="Gradient clipping, actor and critic each (official: 1.0)."
    )
    actor_lr: float = Field(5e-7, gt=0, description="Actor learning rate (official: 5e-7).")
    critic_lr: float = Field(9e-6, gt=0, description="Critic learning rate (official: 9e-6).")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas (OpenRLHF: 0.9, 0.95).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (OpenRLHF: 0).")
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Linear warmup share of the run (OpenRLHF: 3%)."
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Cosine decay to this share of the peak (OpenRLHF cosine_with_min_lr: 0.1).",
    )
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout buffer (official max_epochs: 1).")
    minibatch_size: int = Field(
        64, ge=1, description="Step-samples per optimizer step (official train_batch_size: 64)."
    )
    micro_batch_tokens: int = Field(
        4096,
        ge=1,
        description="Padded tokens per forward pass (gradients accumulate over micro-batches up to a "
        "minibatch): the memory knob. Samples are grouped by length.",
    )
    share_prefixes: bool = Field(
        True,
        description="Compute the prompt a trajectory's step-samples share once, in one row with a tree "
        "attention mask (our optimisation: the same log-probs, ~0.57x the tokens). Off: one row per step.",
    )
    device: str = device_field()
    bf16: bool | None = bf16_field(
        "bf16 mixed precision: forward passes under bf16 autocast, trained weights in fp32, a LoRA run's "
        "frozen base in bf16; rollouts generate on bf16 weights."
    )
    gradient_checkpointing: bool | None = gradient_checkpointing_field()
    rollout_batch_size: int = Field(64, ge=1, description="Conversations per batched generate call.")
    seed: int = Field(0, description="Question order, rollout sampling, minibatch order, LoRA init.")
    eval_every: int = Field(
        1, ge=0, description="Iterations between dev evaluations (0: only before and after)."
    )
    eval_questions: int = Field(100, ge=1, description="Dev questions evaluated (the first N), greedy.")
    save_every: int = Field(
        1, ge=1, description="Iterations between checkpoints (the last one is always saved)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="Checkpoints kept; older ones are deleted.")
    max_minutes: float | None = Field(
        None, gt=0, description="Stop before an iteration that would end past this wall-clock budget."
    )
    snapshot_minutes: list[float] = Field(
        default_factory=list,
        description="Also save the actor a run with `max_minutes` of each of these would have ended with, "
        "as `snapshots/<M>min/` (in `final/`'s layout): one long run gives the shorter budgets' models.",
    )
    tensorboard: bool = Field(True, description="Also write the metrics as TensorBoard events.")

    @model_validator(mode="after")
    def _uniform_groups_need_trajectory_baselines(self) -> Self:
        refuse_uniform_groups_without_trajectory_baselines(self.skip_uniform_groups, self.advantage)
        return self

    @model_validator(mode="after")
    def _kl_target_moves_a_positive_beta(self) -> Self:
        refuse_kl_target_without_beta(self.kl_target, self.kl_coef)
        return self

    @model_validator(mode="after")
    def _ptx_types_pick_from_ptx_data(self) -> Self:
        if self.ptx_types and self.ptx_data is None:
            raise ValueError(
                "ptx_types picks examples of ptx_data: set ptx_data (the cold start's sft.jsonl)"
            )
        return self

    @property
    def kl_penalty(self) -> bool:
        """Is there a KL penalty (so a reference policy to measure it against)?"""
        return self.kl_coef > 0

    @classmethod
    def small_model(cls, **overrides: Any) -> PPOConfig:
        """The :meth:`small_model_settings` preset, with ``overrides``."""
        return cls(**{**cls.small_model_settings(), **overrides})

    @staticmethod
    def small_model_settings() -> dict[str, Any]:
        """Preset for a ~100M-parameter model on a CPU (the embedded SmolLM2-135M): the measured run.

        Learning rates: the paper's ratios, applied to the cold start's own rate (the official actor rate is
        1/20 of its SFT rate, 5e-7 vs 1e-5, and the critic's 18x the actor's) give 5e-6 and 9e-5 for
        SmolLM2's 1e-4. An hour on a CPU holds about 50 optimizer steps instead of the paper's ~10k, so the
        actor takes the largest rate that stays inside PPO's trust region on this task: at 2e-5 the clip
        fraction is about 5% and KL(old || new) about 0.02 per update round (CleanRL's target_kl is 0.015),
        with 9e-5 kept for the value head. A rollout is 4 questions x 4 samples (about 50 step-samples),
        updated twice in minibatches of 8, so an iteration is minutes, not hours; the critic shares the
        actor's trunk (half the update cost and memory). Dev points: 48 questions every 3 iterations.
        """
        return {
            "actor_lr": 2e-5,
            "critic_lr": 9e-5,
            "questions_per_iteration": 4,
            "iterations": 6,
            "ppo_epochs": 2,
            "minibatch_size": 8,
            "micro_batch_tokens": 2048,
            "critic": "shared",
            "eval_questions": 48,
            "eval_every": 3,
        }


# ------------------------------------------------------------------------------------------------ quickstart


class TinyModelConfig(StageConfig):
    """A tiny random-initialised copy of the embedded model's architecture: SmolLM2's tokenizer and chat
    template (so prompts, SFT targets and end-of-turn tokens take their real code paths) on a few narrow
    layers (so every forward pass is cheap). The ``tiny`` quickstart checks the plumbing with it."""

    hidden_size: int = Field(64, ge=8, description="Width of the residual stream.")
    intermediate_size: int = Field(128, ge=8, description="Width of the MLPs.")
    layers: int = Field(2, ge=1, description="Decoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    kv_heads: int = Field(
        2, ge=1, description="Key/value heads (grouped-query attention); must divide heads."
    )
    seed: int = Field(0, description="Seed of the random initialisation.")

    @model_validator(mode="after")
    def _heads_divide(self) -> Self:
        """A head count that does not divide the width would fail deep inside transformers; say it here."""
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must divide hidden_size ({self.hidden_size}) and kv_heads "
                f"({self.kv_heads}) must divide heads"
            )
        return self


# ------------------------------------------------------------------------------------------------ serving


class AgentServerConfig(ServerAccessConfig):
    """``r3rag serve agent``: the reason-retrieve loop over HTTP; access, request limits and batching.

    Every request runs its own agent loop in a worker thread; their model calls (and searches) that wait while
    a batch runs are merged into the next batch, up to ``max_batch_rows`` conversations.
    """

    agent: AgentConfig = Field(
        default_factory=AgentConfig,
        description="The loop; its step budget and top-k are each request's default.",
    )
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig,
        description="The policy: a local model or an OpenAI-compatible endpoint.",
    )

    port: int = Field(8002, ge=0, le=65535, description="Port (the retriever's default plus one).")
    max_question_chars: int = Field(2000, ge=1, description="Longest question, in characters.")
    max_steps: int = Field(10, ge=1, description="Largest step budget a request may ask for.")
    max_top_k: int = Field(20, ge=1, description="Largest top-k a request may ask for.")
    max_body_bytes: int = Field(64 << 10, ge=1024, description="Largest request body.")
    max_concurrent: int = Field(
        64, ge=1, description="Questions answered at once; a request beyond them is answered 503."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Seconds one question may take; 504 after that, and its loop stops."
    )
    max_batch_rows: int = Field(
        64, ge=1, description="Conversations of concurrent requests generated in one call (and local batch)."
    )
    batch_wait_ms: float = Field(
        20.0,
        ge=0,
        description="Wait for more calls before a batch. Calls queue anyway while a batch runs; the wait "
        "keeps a request that finished its step first from running its next one alone, out of phase.",
    )


class ViewerConfig(StageConfig):
    """``r3rag view``: the local web page over a run folder, and its ask tab."""

    host: str = Field("127.0.0.1", description="Interface to listen on (loopback: the page has no login).")
    port: int = Field(7860, ge=0, le=65535, description="Port of the page.")
    agent_url: str | None = Field(
        None, description="Ask tab: the URL of a `r3rag serve agent` (e.g. http://127.0.0.1:8002)."
    )
    agent_api_key_env: str = Field(
        "R3RAG_AGENT_API_KEY", description="Ask tab: environment variable holding the agent server's key."
    )
    index: str | None = Field(
        None,
        description="Ask tab without --agent-url: answer with a local model (--generator.*) over this index "
        "folder or retrieval server URL.",
    )
    max_listed: int = Field(2000, ge=1, description="Trajectories listed at most after filtering.")
    agent: AgentConfig = Field(default_factory=AgentConfig, description="Ask tab, local model: the loop.")
    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="Ask tab, local model: the policy (with --index)."
    )


class VerlLoopConfig(StageConfig):
    """The r3rag agent loop inside veRL (``r3rag.integrations.verl``): what each rollout worker builds once.

    It travels in veRL's own hydra config under the key ``r3rag`` (``+r3rag.retrieval.source=...``;
    ``r3rag verl prepare`` writes the overrides), so every Ray worker gets it with the trainer config.
    Defaults are the official RL rollout, as in :class:`PPOConfig`.
    """

    retrieval: RetrievalConfig = Field(
        description="The retriever every worker queries: the URL of `r3rag serve retriever` on a cluster "
        "(one index in memory for all workers), or an index folder each worker loads."
    )
    rollout: AgentConfig = Field(
        default_factory=_rollout_agent,
        description="Agent settings of rollouts (official RL: top-2, 512 characters); token ids are always "
        "recorded, whatever record_token_ids says.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)
    judges: JudgeConfig = Field(
        default_factory=lambda: JudgeConfig(
            correctness_llm=False, relevance="reference", reference_match="id"
        ),
        description="Offline by default (exact match, gold passages by id); point `endpoint` at an LLM judge "
        "server and switch `correctness_llm` and `relevance: llm` on for the paper's judges. The reference "
        "judge needs `reference_match` id or title here (workers do not see the question files).",
    )
    temperatures: list[float] = Field(
        default_factory=_paper_temperatures,
        min_length=1,
        description="Temperature of a question's i-th sample (veRL's session id), cycled (official: "
        "0.1 + 0.3 i); a greedy request from veRL (validation) stays greedy.",
    )
    advantage: VerlAdvantage = Field(
        "gae",
        description="What each step's output carries for veRL's estimator (`r3rag verl prepare` sets it with "
        "the estimator). gae: the step's own reward (official); gae-trajectory: its reward plus every later "
        "step's; rloo / grpo: the trajectory's return, which veRL's GRPO reads off the trajectory's last "
        "output and compares with the question's other samples.",
    )


class VerlPrepareConfig(StageConfig):
    """``r3rag verl prepare``: veRL's parquet files from our question files, and the launch script of the
    paper's recipe on veRL (PPO with a critic, GAE, KL in the reward, 4 samples per question, one sample per
    step), or of a critic-free one (``advantage``). Defaults are the official run's where veRL has the same
    knob; see docs/verl.md for the mapping."""

    model: str = Field(description="The cold-start policy R3-RAG-CS (a Hugging Face folder on every node).")
    train: Path = Field(description="Training questions (FlashRAG jsonl or any dataset r3rag reads).")
    train_types: list[str] = _train_types_field()
    index: str = Field(description="The URL of `r3rag serve retriever` (or an index folder every node has).")
    out: Path = Field(description="Folder for train.parquet, dev.parquet, overrides.txt and run_verl.sh.")
    dev: Path | None = Field(None, description="Dev questions, veRL's validation set (greedy).")
    critic_model: str | None = Field(
        None, description="The critic's initial weights (default: the policy's)."
    )
    rollout: AgentConfig = Field(
        default_factory=_rollout_agent,
        description="Agent settings of rollouts (official RL: top-2, 512 characters); max_new_tokens is "
        "veRL's response length. Use the values R3-RAG-CS was trained with.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)
    judges: JudgeConfig = Field(
        default_factory=lambda: JudgeConfig(correctness_llm=False, relevance="reference"),
        description="Offline by default; `reference_match` auto is resolved here against the index. Point "
        "`endpoint` at an LLM judge server reachable from every node for the paper's judges.",
    )
    temperatures: list[float] = Field(
        default_factory=_paper_temperatures,
        min_length=1,
        description="Temperature of a question's i-th sample, cycled (official: 0.1 + 0.3 i).",
    )
    advantage: VerlAdvantage = Field(
        "gae",
        description="gae: PPO with a critic, GAE over step samples, each its own reward (official). "
        "gae-trajectory: the same, each step its reward plus every later step's. rloo / grpo: critic-free, "
        "veRL's GRPO over the question's trajectories (each trajectory's return, its advantage on every "
        "step); grpo divides by the group's std, rloo does not (G - mean: RLOO's advantage times "
        "(K-1)/K). Critic-free, the KL penalty is a loss term (veRL's use_kl_loss), not a reward.",
    )
    actor_lr: float = Field(5e-7, gt=0, description="Actor learning rate (official: 5e-7).")
    critic_lr: float = Field(9e-6, gt=0, description="Critic learning rate (official: 9e-6).")
    lora_rank: int = Field(
        0,
        ge=0,
        description="Train the actor through LoRA adapters of this rank (veRL's model.lora_rank; LoRA runs "
        "want a larger actor_lr, about 10x); veRL then takes the reference policy from the actor with its "
        "adapters off, so no second copy of the weights. The critic stays a full model. 0: all weights "
        "(official).",
    )
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (veRL's lora_alpha: 16).")
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Modules that get adapters (veRL's target_modules): 'all-linear' or a list of names.",
    )
    old_logprobs: Literal["recompute", "rollout"] = Field(
        "recompute",
        description="pi_old of the ratio. recompute: veRL's actor computes it in a pass over the rollout "
        "(official). rollout: the log-probs vLLM returned while sampling, at temperature 1 whatever the "
        "sample's temperature (logprobs_mode raw_logprobs), carried by the agent loop on every step's output "
        "(veRL's rollout_correction.bypass_mode): no pass, but pi_old then holds the server's numerics, not "
        "the trainer's (other kernels, often another precision), as `r3rag train --old-logprobs rollout` "
        "holds the decode's. vLLM only.",
    )
    skip_uniform_groups: bool = Field(
        False,
        description="rloo / grpo: drop every question whose trajectories all got the same return and "
        "sample new questions in their place until the batch is full (veRL's algorithm.filter_groups, DAPO's "
        "dynamic sampling, on the return the agent loop reports); `r3rag train` drops them without "
        "re-sampling. Off: every trajectory is updated on (official).",
    )
    kl_coef: float = Field(
        0.01,
        ge=0,
        description="KL penalty (official init_kl_coef 0.01): in the reward with a critic, the actor's loss "
        "term critic-free; 0: none, and no reference model.",
    )
    kl_target: float | None = Field(
        None,
        gt=0,
        description="Adaptive beta towards this KL (veRL kl_ctrl.type adaptive; advantage gae or "
        "gae-trajectory only); None: fixed.",
    )
    kl_horizon: float = Field(
        10_000.0, gt=0, description="veRL's kl_ctrl.horizon: samples over which beta moves by at most 20%."
    )
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="k1 (veRL 'kl') or k3 ('low_var_kl').")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount (official: 1.0).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda (official: 1.0).")
    clip_ratio: float = Field(0.2, gt=0, description="PPO ratio clip (official: 0.2).")
    value_clip: float = Field(0.2, gt=0, description="Critic value clip (official: 0.2).")
    samples_per_question: int = Field(4, ge=1, description="veRL's rollout.n (official: 4).")
    questions_per_iteration: int = Field(64, ge=1, description="veRL's data.train_batch_size (official: 64).")
    minibatch_size: int = Field(
        64, ge=1, description="veRL's ppo_mini_batch_size, in questions (veRL multiplies by rollout.n)."
    )
    micro_batch_per_gpu: int = Field(4, ge=1, description="Samples per forward pass on one GPU.")
    epochs: int = Field(4, ge=1, description="Passes over the training questions (official: 4 episodes).")
    max_prompt_length: int = Field(
        4096, ge=1, description="Prompt tokens of a step (question, earlier steps, their documents)."
    )
    n_gpus_per_node: int = Field(8, ge=1, description="GPUs per node (the paper: one node of 8).")
    nnodes: int = Field(1, ge=1, description="Nodes of the Ray cluster.")
    rollout_engine: Literal["vllm", "sglang"] = Field("vllm", description="veRL's rollout server.")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of each GPU's memory the rollout server takes."
    )
    save_freq: int = Field(50, description="Save a checkpoint every N training steps (-1: never).")
    test_freq: int = Field(50, description="Validate every N training steps (-1: never).")
    project_name: str = Field("r3rag", description="veRL's trainer.project_name (logs, checkpoints).")
    experiment_name: str = Field("r3rag-ppo", description="veRL's trainer.experiment_name.")

    @model_validator(mode="after")
    def _kl_target_moves_a_positive_beta(self) -> Self:
        refuse_kl_target_without_beta(self.kl_target, self.kl_coef)
        if self.kl_target is not None and self.advantage in CRITIC_FREE:
            raise ValueError(
                f"kl_target adapts the KL penalty in the reward; with advantage {self.advantage!r} veRL puts "
                "the penalty in the actor's loss at a fixed kl_coef: drop kl_target"
            )
        return self

    @model_validator(mode="after")
    def _uniform_groups_need_trajectory_baselines(self) -> Self:
        refuse_uniform_groups_without_trajectory_baselines(self.skip_uniform_groups, self.advantage)
        return self

    @model_validator(mode="after")
    def _rollout_logprobs_come_from_vllm(self) -> Self:
        if self.old_logprobs == "rollout" and self.rollout_engine != "vllm":
            raise ValueError(
                "old_logprobs rollout needs the server's log-probs at temperature 1, which veRL asks of vLLM "
                f"(logprobs_mode raw_logprobs); {self.rollout_engine}'s are not checked: use rollout_engine "
                "vllm or old_logprobs recompute"
            )
        return self
