"""Request and response models of the public API (with the examples shown in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VIDEO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
MAX_COLLECTIONS_PER_UPLOAD = 16


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests --------------------------------------------------------------------------------
class InlineVideo(_In):
    """Video features sent with the request instead of a stored ``video_id`` (one-off calls)."""

    format: Literal["npy", "npz"] = Field(description="Layout of the decoded bytes, as for the upload endpoint.")
    data_b64: str = Field(min_length=1, description="base64 of the .npy / .npz file bytes.")


class QueryIn(_In):
    """One query: a text (needs a bundle with a text encoder) or precomputed token features."""

    text: str | None = Field(default=None, min_length=1, description="Natural-language query.")
    features_b64: str | None = Field(
        default=None,
        min_length=1,
        description="base64 of a .npy (tokens, text_dim) float16/float32 array of token features "
        "(e.g. CLIP text last_hidden_state of the real tokens); normalised by the service.",
    )

    @field_validator("text")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("query text is empty; send a non-empty text")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _exactly_one(self) -> QueryIn:
        if (self.text is None) == (self.features_b64 is None):
            raise ValueError("give exactly one of 'text' or 'features_b64' per query")
        return self


class SearchRequest(_In):
    """Which video to search and the queries to run on it (all queries run as one batch)."""

    video_id: str | None = Field(default=None, pattern=VIDEO_ID_PATTERN, description="A stored video.")
    video: InlineVideo | None = Field(default=None, description="Inline features instead of video_id.")
    queries: list[Annotated[str, Field(min_length=1)] | QueryIn] = Field(
        min_length=1, description="Query texts (plain strings) and/or query objects."
    )
    top_k: int = Field(default=5, ge=1, le=100, description="How many moments / highlight clips to return.")

    @field_validator("queries")
    @classmethod
    def _as_objects(cls, queries: list[str | QueryIn]) -> list[str | QueryIn]:
        return [QueryIn(text=q) if isinstance(q, str) else q for q in queries]

    @model_validator(mode="after")
    def _one_video(self) -> SearchRequest:
        if (self.video_id is None) == (self.video is None):
            raise ValueError("give exactly one of 'video_id' (stored features) or 'video' (inline features)")
        return self

    def query_objects(self) -> list[QueryIn]:
        return [q for q in self.queries if isinstance(q, QueryIn)]


class MomentsRequest(SearchRequest):
    nms_iou: float | None = Field(
        default=None, ge=0, le=1, description="Drop moments overlapping a better one by more than this IoU."
    )
    min_score: float | None = Field(default=None, ge=0, le=1, description="Drop moments scoring below this.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"video_id": "RoripwjYFp8_60.0_210.0", "queries": ["a man plays the guitar on stage"], "top_k": 5,
                 "nms_iou": 0.7},
            ]
        },
    )


class HighlightsRequest(SearchRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"video_id": "RoripwjYFp8_60.0_210.0", "queries": ["a man plays the guitar"], "top_k": 3}]
        },
    )


class CollectionSearchRequest(_In):
    """One query over many stored videos: a collection's, or a list of ids."""

    query: Annotated[str, Field(min_length=1)] | QueryIn = Field(
        description="A query text, or a query object ({'text'} or {'features_b64'}).")
    collection: str | None = Field(default=None, pattern=COLLECTION_PATTERN, description="Search this collection.")
    video_ids: list[Annotated[str, Field(pattern=VIDEO_ID_PATTERN)]] | None = Field(
        default=None, min_length=1, description="Or search these stored videos (at most TRDETR_SEARCH_MAX_VIDEO_IDS).")
    top_k: int = Field(default=10, ge=1, le=100, description="Moments in this page of results.")
    per_video_k: int = Field(default=3, ge=1, le=20, description="Most moments of one video in the ranking.")
    nms_iou: float | None = Field(
        default=None, ge=0, le=1, description="Within a video, drop moments overlapping a better one by more than this.")
    min_score: float | None = Field(default=None, ge=0, le=1, description="Drop moments scoring below this.")
    cursor: str | None = Field(default=None, max_length=200,
                               description="next_cursor of the previous page (send the same request with it).")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "a man plays the guitar on stage", "collection": "concerts",
                                         "top_k": 10, "per_video_k": 2}]},
    )

    @field_validator("query")
    @classmethod
    def _as_object(cls, query: str | QueryIn) -> QueryIn:
        return QueryIn(text=query) if isinstance(query, str) else query

    @model_validator(mode="after")
    def _one_scope(self) -> CollectionSearchRequest:
        if (self.collection is None) == (self.video_ids is None):
            raise ValueError("give exactly one of 'collection' (a collection name) or 'video_ids' (stored videos)")
        return self

    def query_object(self) -> QueryIn:
        assert isinstance(self.query, QueryIn)
        return self.query


# --- responses -------------------------------------------------------------------------------
class VideoInfo(BaseModel):
    video_id: str
    num_clips: int = Field(description="Clips stored (after cutting groups to the shortest).")
    duration_s: float = Field(description="num_clips x clip_length_s.")
    clip_length_s: float
    dim: int = Field(description="Stored feature width (groups concatenated, without TEF).")
    groups: dict[str, int] = Field(description="Feature group name -> width.")
    storage_dtype: str = Field(description="How the features are kept in Redis.")
    ttl_s: int = Field(description="Seconds until the features expire.")
    expires_at: float = Field(description="Unix time of expiry.")
    notes: list[str] = Field(default_factory=list, description="What the service changed (e.g. truncation).")
    collections: list[str] = Field(default_factory=list, description="Names of the collections it belongs to.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"video_id": "RoripwjYFp8_60.0_210.0", "num_clips": 75, "duration_s": 150.0, "clip_length_s": 2.0,
                 "dim": 2816, "groups": {"slowfast": 2304, "clip": 512}, "storage_dtype": "float16-le-rowmajor",
                 "ttl_s": 604800, "expires_at": 1767225600.0, "notes": []}
            ]
        }
    )


class VideoList(BaseModel):
    """One page of stored videos, in the order they were first stored."""

    videos: list[VideoInfo]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class CollectionInfo(BaseModel):
    name: str
    videos: int = Field(description="Stored (unexpired) videos in the collection.")


class CollectionList(BaseModel):
    collections: list[CollectionInfo] = Field(description="Every collection of this API key, by name.")


class CollectionMember(BaseModel):
    collection: str
    video_id: str
    member: bool = Field(description="Whether the video is in the collection now.")


class CollectionDeleted(BaseModel):
    collection: str
    deleted: bool = True


class Deleted(BaseModel):
    video_id: str
    deleted: bool = True


class Moment(BaseModel):
    start: float = Field(description="Seconds from the video start.")
    end: float = Field(description="Seconds from the video start (> start, <= duration).")
    score: float = Field(description="Foreground probability of the moment, 0-1 (softmax of the class logits).")


class Windowing(BaseModel):
    """How the answer was computed: the model's window(s) over the video and how their answers were merged."""

    window_clips: int = Field(description="The model's window: the longest video it was trained on, in clips.")
    stride_clips: int = Field(description="Clips between the starts of consecutive windows (TRDETR_WINDOW_STRIDE).")
    num_windows: int = Field(description="Windows the model ran on: 1 when the video fits the model's window.")
    merge: str = Field(
        description="How the windows' answers were combined: 'none' (one window: the model's own answer), for "
        "moments the TRDETR_MOMENT_MERGE rule, for highlights 'mean' (each clip: mean raw saliency of the "
        "windows containing it)."
    )


_ONE_WINDOW = {"window_clips": 75, "stride_clips": 38, "num_windows": 1, "merge": "none"}


class QueryMoments(BaseModel):
    query_index: int
    text: str | None = Field(description="The query text, or null for a features query.")
    moments: list[Moment] = Field(description="Best first.")


class MomentsResponse(BaseModel):
    video_id: str | None
    num_clips: int
    duration_s: float
    windowing: Windowing
    results: list[QueryMoments]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"video_id": "RoripwjYFp8_60.0_210.0", "num_clips": 75, "duration_s": 150.0, "windowing": _ONE_WINDOW,
                 "results": [{"query_index": 0, "text": "a man plays the guitar on stage",
                              "moments": [{"start": 24.0, "end": 58.0, "score": 0.91},
                                          {"start": 96.0, "end": 110.0, "score": 0.42}]}]}
            ]
        }
    )


class SearchHit(BaseModel):
    video_id: str
    start: float = Field(description="Seconds from the video start.")
    end: float = Field(description="Seconds from the video start.")
    score: float = Field(description="Foreground probability of the moment, 0-1, as /v1/moments gives it.")


class CollectionSearchResponse(BaseModel):
    results: list[SearchHit] = Field(description="Best first across videos; at most per_video_k of one video.")
    next_cursor: str | None = Field(description="Send the same request with this cursor for the next page.")
    searched_videos: int = Field(description="Stored videos in scope (the collection, or the given ids found).")
    candidate_videos: int = Field(description="Videos TR-DETR ran on (fewer than searched_videos when stage 1 picked "
                                  "candidates or the scope was cut at TRDETR_SEARCH_EXHAUSTIVE_LIMIT).")
    stage1: Literal["none", "index", "exhaustive_limit"] = Field(
        description="none: every video in scope was searched by TR-DETR; index: the scope was larger than "
        "TRDETR_SEARCH_CANDIDATES, and the TRDETR_SEARCH_CANDIDATES videos whose CLIP image summary is most "
        "similar to the query's CLIP text embedding were searched; exhaustive_limit: stage 1 could not run (a "
        "bundle without a CLIP text embedding, or a query given as token features; notes say which) and the "
        "scope was larger than TRDETR_SEARCH_EXHAUSTIVE_LIMIT, so only its first videos (in the order they were "
        "stored) were searched.")
    notes: list[str] = Field(default_factory=list, description="What limited this search, if anything.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"results": [{"video_id": "concert-17", "start": 24.0, "end": 58.0, "score": 0.91},
                     {"video_id": "concert-3", "start": 96.0, "end": 110.0, "score": 0.84}],
         "next_cursor": "s1.3f1c9a0e5b7d4e2f.2", "searched_videos": 240, "candidate_videos": 240, "stage1": "none",
         "notes": []}]})


class ClipScore(BaseModel):
    clip: int = Field(description="Clip index, 0-based.")
    start: float = Field(description="Clip start in seconds.")
    end: float = Field(description="Clip end in seconds.")
    raw: float = Field(
        description="The model's saliency logit: unbounded, often negative; only its order within one "
        "video and query means anything."
    )
    normalized: float = Field(description="(raw - min) / (max - min) over this video's clips for this query, 0-1.")


class QueryHighlights(BaseModel):
    query_index: int
    text: str | None
    clips: list[ClipScore] = Field(description="Every clip in time order.")
    top_clips: list[ClipScore] = Field(description="The top_k clips by saliency, best first.")


class HighlightsResponse(BaseModel):
    video_id: str | None
    num_clips: int
    duration_s: float
    windowing: Windowing
    results: list[QueryHighlights]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"video_id": "RoripwjYFp8_60.0_210.0", "num_clips": 2, "duration_s": 4.0, "windowing": _ONE_WINDOW,
                 "results": [{"query_index": 0, "text": "a man plays the guitar",
                              "clips": [{"clip": 0, "start": 0.0, "end": 2.0, "raw": -1.3, "normalized": 0.0},
                                        {"clip": 1, "start": 2.0, "end": 4.0, "raw": 0.7, "normalized": 1.0}],
                              "top_clips": [{"clip": 1, "start": 2.0, "end": 4.0, "raw": 0.7, "normalized": 1.0}]}]}
            ]
        }
    )


class ModelInfo(BaseModel):
    bundle: str = Field(description="Name of the bundle's directory (server paths are never shown).")
    format_version: int
    created_at: str
    untrained: bool = Field(description="True for demo bundles with random weights: answers are meaningless.")
    source_checkpoint: dict
    precision: str = Field(description="Which of the bundle's graphs runs: fp32, fp16 or int8 (TRDETR_PRECISION).")
    model_file: str = Field(description="The bundle's ONNX file of that graph, e.g. model.int8.onnx.")
    providers: list[str] = Field(description="ONNX Runtime execution providers actually active.")
    text_encoder: bool = Field(description="Whether text queries are accepted.")
    text_features_expected: str
    feature_layout: str = Field(description="Version of the stored-feature layout (part of the Redis keys).")
    video_groups: dict[str, int]
    audio_groups: dict[str, int] = Field(
        default_factory=dict, description="Audio feature groups (e.g. PANN 'pann': 2048) of a model trained with "
        "audio; uploads then hold them too. Empty for video+text models.")
    video_input_dim: int
    text_dim: int
    clip_length_s: float
    max_video_clips: int = Field(description="The model's window: the longest video it was trained on, in clips. "
                                 "Longer videos (up to limits.max_video_clips) run on overlapping windows.")
    window_stride_clips: int = Field(description="Clips between the starts of the windows on a longer video.")
    moment_merge: str = Field(description="How moments of overlapping windows are merged (TRDETR_MOMENT_MERGE).")
    max_text_tokens: int
    num_queries: int | None = Field(description="Moment queries (candidate spans) the model predicts.")
    outputs: dict[str, str]
    limits: dict[str, int | float]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code (see service/README.md).")
    message: str = Field(description="What went wrong and what to fix.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Structured context (limits, offending field, ...); always an object."
    )


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "video_too_long", "message": "The video has 5401 clips (10802 s); at "
                                    "most 5400 clips (10800 s of 2-s clips, TRDETR_MAX_VIDEO_S) are accepted. Split "
                                    "the video into parts of at most that length.",
                                    "details": {"num_clips": 5401, "max_clips": 5400, "duration_s": 10802.0,
                                                "max_video_s": 10800.0}}}]
        }
    )


class KServeErrorResponse(BaseModel):
    """Errors under ``/v2``: the KServe v2 protocol's ``{"error": message}``, with the code and details beside."""

    error: str = Field(description="What went wrong and what to fix.")
    code: str = Field(description="Stable machine-readable error code (see service/README.md).")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context; always an object.")


def error_responses(*statuses: int, kserve: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these statuses, with the :class:`ErrorResponse` shape (``kserve``:
    :class:`KServeErrorResponse`)."""
    model = KServeErrorResponse if kserve else ErrorResponse
    return {status: {"model": model, "description": ERROR_MEANINGS[status]} for status in statuses}


ERROR_MEANINGS = {
    401: "API key missing",
    403: "API key wrong",
    404: "Unknown video (never stored, deleted or expired)",
    408: "The upload's body was too slow (TRDETR_UPLOAD_IDLE_TIMEOUT_S, TRDETR_UPLOAD_MIN_BYTES_PER_S)",
    409: "The bundle cannot extract features from videos (a feature group has no encoder)",
    413: "Body larger than TRDETR_MAX_BODY_BYTES",
    415: "Upload content type is not .npy / .npz",
    422: "Invalid input; the message says what to fix",
    429: "Inference queue full (see Retry-After)",
    503: "Feature cache unreachable (send features inline), or the model is not ready yet",
    504: "Inference deadline exceeded",
}


JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


class JobAccepted(BaseModel):
    """An accepted video upload: its ingestion job is queued."""

    job_id: str
    video_id: str
    status: Literal["queued"] = "queued"
    status_url: str = Field(description="GET this for the job's status (also in the Location header).")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"job_id": "3f1c9a0e5b7d4e2f8a6b1c0d9e8f7a6b", "video_id": "my-video", "status": "queued",
         "status_url": "/v1/jobs/3f1c9a0e5b7d4e2f8a6b1c0d9e8f7a6b"}]})


class JobErrorOut(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. corrupt_video, job_timeout.")
    message: str = Field(description="What went wrong and what to do about it.")


class JobStatus(BaseModel):
    """An ingestion job: where it is, and on success the stored video."""

    job_id: str
    video_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1, description="0-1; 1 once succeeded.")
    created_at: float = Field(description="Unix time of the upload.")
    started_at: float | None = Field(description="Unix time a worker first started the job.")
    finished_at: float | None = Field(description="Unix time the job ended.")
    error: JobErrorOut | None = Field(description="Why the job failed (status failed only).")
    video: VideoInfo | None = Field(
        description="On success, the same object as GET /v1/videos/{video_id}; null before, on failure, and once "
        "the video was replaced, deleted or expired.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"job_id": "3f1c9a0e5b7d4e2f8a6b1c0d9e8f7a6b", "video_id": "my-video", "status": "failed", "progress": 0.0,
         "created_at": 1767225600.0, "started_at": 1767225601.2, "finished_at": 1767225601.9,
         "error": {"code": "corrupt_video", "message": "The video stream cannot be decoded at 12.4 s ..."},
         "video": None}]})


class Health(BaseModel):
    status: Literal["ok", "starting", "not_ready"]
    checks: dict[str, str | bool | list[str]] = Field(default_factory=dict)
