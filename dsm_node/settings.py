"""Typed configuration of the node.

Precedence, lowest first: the schema defaults below (mirrored, with comments, in
config/node.yaml), a YAML file given with ``--config``, ``DSM_NODE__SECTION__KEY`` environment
variables, then command-line flags such as ``--port``. Unknown keys are errors that name the key,
because a typo in a hospital config must not silently fall back to a default.
"""
from __future__ import annotations

import contextvars
import ipaddress
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from model.resources import package_file

# Shipped inside the packages (the repository's config/ and weights/ link to these files).
DEFAULT_CONFIG = package_file("dsm_node", "defaults", "node.yaml")
DEFAULT_WEIGHTS = package_file("model", "weights", "dsm-small-demo.pt")

log = logging.getLogger(__name__)

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


class ConfigError(Exception):
    """A configuration problem, with the offending key in the message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Old key -> new key of a renamed setting: the old one is still read (YAML and environment)
    # with a warning, so that a site's config keeps working; the schema, the generated
    # config/node.yaml and check-config show the new one only.
    renamed_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed_keys.keys() & data.keys():
            return data
        data = dict(data)
        section = cls.__name__.lower()
        for old, new in cls.renamed_keys.items():
            if old not in data:
                continue
            value = data.pop(old)
            if new in data:
                log.warning("setting %s.%s is deprecated and ignored: %s.%s is set too", section, old, section, new)
            else:
                log.warning("setting %s.%s is deprecated, use %s.%s", section, old, section, new)
                data[new] = value
        return data


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or value.strip() == "" or "\\" in value:
        raise ValueError("an AE title is 1-16 printable ASCII characters, not only spaces, no backslash")
    return value.strip()


class Peer(_Section):
    """A DICOM peer allowed to associate (normally the PACS)."""

    ae_title: str = Field(description="Calling AE title the peer uses")
    networks: list[str] = Field(description="Source addresses allowed, as CIDR (e.g. 10.1.2.3/32)")
    port: int | None = Field(None, description="The peer's own SCP port, used when delivery replies to the caller")
    description: str = ""

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae(v))

    @field_validator("networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one network (CIDR) is required")
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class TLS(_Section):
    enabled: bool = Field(False, description="Accept only TLS associations (BCP 195)")
    cert_file: Path | None = Field(None, description="PEM certificate of the node")
    key_file: Path | None = Field(None, description="PEM private key of the node")
    ca_file: Path | None = Field(None, description="CA bundle used to verify client certificates")
    require_client_cert: bool = Field(True, description="Reject peers without a certificate signed by ca_file")

    @model_validator(mode="after")
    def _files(self) -> TLS:
        if self.enabled:
            missing = [k for k in ("cert_file", "key_file") if getattr(self, k) is None]
            if self.require_client_cert and self.ca_file is None:
                missing.append("ca_file")
            if missing:
                raise ValueError(f"TLS is enabled but {', '.join(missing)} not set")
        return self


class Dicom(_Section):
    ae_title: str = Field("DSMNODE", description="Our AE title; associations calling another title are rejected")
    host: str = Field("127.0.0.1", description="Listen address; set 0.0.0.0 (and peers) to receive from a PACS")
    port: int = Field(11112, ge=0, le=65535, description="DICOM port (0 = any free port, for tests)")
    peers: list[Peer] = Field(default_factory=list, description="Allow-list; empty = loopback only")
    require_called_ae: bool = Field(True, description="Reject associations whose called AE is not ae_title")
    max_associations: int = Field(16, ge=1, description="Associations open at once (only established ones count)")
    max_pending: int = Field(
        64, ge=1, description="Connections waiting to associate (accepted, no association yet); more are closed at once"
    )
    # A PACS opens up to max_associations associations at once from one address: as many may
    # be negotiating at the same moment.
    max_pending_per_source: int = Field(
        16, ge=1, description="Connections from one source address waiting to associate; more are closed at once"
    )
    max_pdu: int = Field(
        131072, ge=0,
        description="Maximum P-DATA PDU we receive; a longer one aborts the association (0 = no advertised limit; "
                    "then twice max_instance_bytes)",
    )
    acse_timeout_s: float = Field(
        30, gt=0, description="From accept to a complete A-ASSOCIATE-RQ (TLS handshake included), and ACSE replies"
    )
    dimse_timeout_s: float = Field(60, gt=0)
    network_timeout_s: float = Field(60, gt=0, description="Idle association, and each read or write once associated")
    max_instance_bytes: int = Field(2 * 1024**3, gt=0, description="Larger instances are refused")
    other_sop_classes: Literal["ignore", "reject"] = Field(
        "ignore", description="Non-CT objects: accept and ignore (a PACS routing whole studies sees no failures) or reject"
    )
    tls: TLS = Field(default_factory=TLS)

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae(v))


class Storage(_Section):
    data_dir: Path = Field(Path("var"), description="Spool, SQLite database, results and logs live under here")
    min_free_bytes: int = Field(1024**3, ge=0, description="Refuse instances (0xA700) below this free disk space")
    quota_bytes: int | None = Field(None, ge=0, description="Refuse instances (0xA700) when the spool exceeds this")
    fsync: bool = Field(True, description="fsync each instance before answering Success (durability)")

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def work_dir(self) -> Path:
        """Scratch files of running jobs (file-backed volumes; unlinked, nothing stays)."""
        return self.data_dir / "work"


class Database(_Section):
    url: SecretStr | None = Field(None, description="SQLAlchemy URL; empty = SQLite at DATA_DIR/dsm-node.db")
    auto_migrate: bool = Field(True, description="Apply pending migrations at start-up")


class Completeness(_Section):
    quiet_period_s: float = Field(30, ge=0, description="A study is complete after this long without a new instance")
    poll_interval_s: float = Field(1.0, gt=0)


class Rule(_Section):
    """Include or exclude a series by a header attribute (keyword), by regex or numeric range."""

    tag: str = Field(description="DICOM keyword, e.g. SeriesDescription")
    action: Literal["include", "exclude"] = "exclude"
    regex: str | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Rule:
        if self.regex is None and self.min is None and self.max is None:
            raise ValueError("a rule needs regex, min or max")
        if self.regex is not None:
            re.compile(self.regex)
        return self


class Selection(_Section):
    modality: str = "CT"
    require_image_type: list[str] = Field(default_factory=lambda: ["ORIGINAL", "PRIMARY"])
    prefer_image_type: str = "AXIAL"
    exclude_image_type: list[str] = Field(default_factory=lambda: ["LOCALIZER", "SCOUT"])
    min_slices: int = Field(20, ge=1)
    max_slice_thickness_mm: float = Field(5.0, gt=0)
    prefer_description_regex: str = Field(
        r"(?i)(venous|portal|\bpv\b|\bven\b|\b70\s*s\b|c\+)",
        description="Preferred (portal venous) phase, matched against SeriesDescription",
    )
    rules: list[Rule] = Field(default_factory=list)


# inference.exclude_classes: names that stand for several classes (dsm_node.infer.segmenter).
EXCLUDE_GROUPS = ("tumors", "zero-shot")


class Inference(_Section):
    checkpoint: Path | None = Field(None, description="Model checkpoint; empty = bundled demo weights")
    device: str = Field("auto", description="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    sw_batch_size: int | None = Field(
        None, ge=1, description="Windows per forward pass (empty = the checkpoint's; memory, not results)")
    overlap: float | None = Field(
        None, ge=0, lt=1,
        description="Sliding-window overlap (empty = the checkpoint's, as evaluated; another value changes results)")
    amp: bool = Field(True, description="Mixed precision on CUDA")
    catalog_extra: Path | None = Field(
        None, description="YAML of site classes (classes.yaml format, with coding) added as zero-shot outputs"
    )
    clip_checkpoint: Path | None = Field(None, description="Local open_clip checkpoint to embed new class names")
    cpu_threads: int | None = Field(
        None, ge=1,
        description="torch CPU threads of the process (empty = torch's default, all cores); fewer help when "
                    "other heavy processes share the CPU",
    )
    max_voxels: int = Field(
        512 * 512 * 2048, ge=1,
        description="A series with more slices x rows x columns fails its job before anything is decoded (memory bound)",
    )
    max_memory_mb: int | None = Field(
        None, ge=1,
        description="A series whose estimated inference peak (docs/memory.md) exceeds this fails its job before "
                    "anything is decoded; empty = what the machine has available (MemAvailable) at job start",
    )
    spill: bool = Field(
        True,
        description="Keep the CT's HU in a file-backed array under storage.data_dir/work (dsm-node infer: the "
                    "output folder), paged in where a stage reads it: peak memory grows less with the slice "
                    "count (docs/memory.md). Off: in memory",
    )
    spill_dir: Path | None = Field(
        None,
        description="Folder of the file-backed HU (a local disk, not a tmpfs; about 2 bytes per voxel during a "
                    "job); empty = storage.data_dir/work. Set it on workers whose data_dir is a network share",
    )
    exclude_classes: list[str] = Field(
        default_factory=list,
        description="Classes never drawn in the results (SEG, SR, key images; dsm-node infer's labels): catalog "
                    "names, or the groups 'tumors' (every tumour class) and 'zero-shot' (the tumour classes the "
                    "model has no trained query for). E.g. [zero-shot] where the model card says its zero-shot "
                    "tumours are not usable. An excluded organ's tumours are still drawn",
    )

    @model_validator(mode="after")
    def _known_classes(self) -> Inference:
        if not self.exclude_classes:
            return self
        from model.catalog import CatalogError, load_catalog

        try:
            names = set(load_catalog(extra=self.catalog_extra).names)
        except (CatalogError, OSError) as exc:
            raise ValueError(f"exclude_classes: the class catalog cannot be read: {exc}") from None
        unknown = [n for n in self.exclude_classes if n not in names and n not in EXCLUDE_GROUPS]
        if unknown:
            raise ValueError(f"exclude_classes: unknown {unknown}; use class names of config/classes.yaml "
                             f"(and inference.catalog_extra) or the groups {list(EXCLUDE_GROUPS)}")
        return self


class Results(_Section):
    uid_root: str = Field("1.2.826.0.1.3680043.8.498.", description="Site UID root for deterministic result UIDs")
    seg_type: Literal["BINARY", "LABELMAP"] = "BINARY"
    seg_series_description: str = "DSM segmentation - not for diagnostic use"
    sr_series_description: str = "DSM measurements - not for diagnostic use"
    seg_series_number: int = 9901
    sr_series_number: int = 9902
    manufacturer: str = "dsm-node"
    institution_name: str | None = None
    renamed_keys: ClassVar[dict[str, str]] = {"organs_include_tumours": "organs_include_tumors"}

    organs_include_tumors: bool = Field(
        False, description="BINARY SEG: encode an organ that is a tumour's parent as its tissue plus its tumours, enclosed "
                           "holes filled, overlapping the tumour's own segment. Off by default because OHIF 3.13 drops "
                           "overlays of overlapping SEGs (docs/results.md); the SR reports both volumes either way. "
                           "The old name organs_include_tumours is still read, with a warning")
    lesion_min_volume_ml: float = Field(
        0.5, ge=0, description="Tumour components (lesions) smaller than this get no lesion measurement group "
                               "(0.5 ml ~ a 10 mm sphere, RECIST's smallest measurable lesion)")
    secondary_capture: bool = Field(
        True, description="Also send key images (Secondary Capture, burnt-in outlines and axes) for viewers without SEG support")
    key_images_max_lesions: int = Field(6, ge=0, description="Key images: at most this many lesion images (largest first)")
    sc_series_description: str = "DSM key images - NOT FOR DIAGNOSTIC USE"
    sc_series_number: int = 9903

    @field_validator("uid_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", v) or len(v) > 40:
            raise ValueError("a UID root is dotted digits without leading zeros, ending with '.', at most 40 chars")
        return v


class WebTLS(_Section):
    """TLS of an https:// DICOMweb or webhook endpoint."""

    verify: bool = Field(True, description="Verify the server certificate and host name (keep on outside tests)")
    ca_file: Path | None = Field(None, description="CA bundle for the server certificate; empty = system CAs")
    cert_file: Path | None = Field(None, description="Client certificate (PEM), for servers that require one")
    key_file: Path | None = Field(None, description="Client private key (PEM)")


class WebAuth(_Section):
    """HTTP authentication: none, basic (username + password) or bearer (token)."""

    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="Bearer token (sent as 'Authorization: Bearer ...')")

    @model_validator(mode="after")
    def _complete(self) -> WebAuth:
        if self.type == "basic" and (not self.username or self.password is None):
            raise ValueError("basic auth needs username and password")
        if self.type == "bearer" and (self.token is None or not self.token.get_secret_value()):
            raise ValueError("bearer auth needs a token")
        return self


def _check_http_url(v: str | None) -> str | None:
    if v is None:
        return v
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
        raise ValueError("an http:// or https:// URL is required")
    if re.match(r"^https?://[^/@]*@", v):
        raise ValueError("put credentials in auth, not in the URL (the URL is logged and audited)")
    return v.rstrip("/")


class Destination(_Section):
    """Where results are sent: a DICOM peer by C-STORE (kind dimse) or a DICOMweb service by
    STOW-RS (kind stow)."""

    name: str
    kind: Literal["dimse", "stow"] = Field("dimse", description="dimse: C-STORE to ae_title@host:port; stow: STOW-RS to url")
    ae_title: str | None = Field(None, description="dimse: the PACS's AE title")
    host: str | None = Field(None, description="dimse: the PACS's host name or address")
    port: int | None = Field(None, ge=1, le=65535, description="dimse: the PACS's DICOM port")
    tls: TLS = Field(default_factory=TLS)
    url: str | None = Field(None, description="stow: DICOMweb service root, e.g. https://pacs/dicom-web (POST url/studies)")
    auth: WebAuth = Field(default_factory=WebAuth)
    web_tls: WebTLS = Field(default_factory=WebTLS)

    _url = field_validator("url")(lambda cls, v: _check_http_url(v))

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae(v)

    @model_validator(mode="after")
    def _kind_fields(self) -> Destination:
        if self.kind == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"a dimse destination needs {', '.join(missing)}")
        elif self.url is None:
            raise ValueError("a stow destination needs url")
        return self


class Webhook(_Section):
    """A JSON POST sent when a job ends (delivered, failed / dead letter)."""

    name: str
    url: str
    events: list[Literal["delivered", "failed"]] = Field(
        default_factory=lambda: ["delivered", "failed"], description="Job outcomes that trigger it")
    auth: WebAuth = Field(default_factory=WebAuth)
    web_tls: WebTLS = Field(default_factory=WebTLS)

    _url = field_validator("url")(lambda cls, v: _check_http_url(v))


class Notifications(_Section):
    webhooks: list[Webhook] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1, description="Attempts per notification before it is given up (audited)")
    backoff_initial_s: float = Field(5, gt=0)
    backoff_max_s: float = Field(600, gt=0)
    timeout_s: float = Field(10, gt=0)
    lookback_h: float = Field(
        24, gt=0, description="At start-up, job outcomes this recent without a recorded notification are sent")
    poll_interval_s: float = Field(2, gt=0)


class Delivery(_Section):
    destinations: list[Destination] = Field(default_factory=list)
    reply_to_caller: bool = Field(False, description="Also send results to the peer that sent the study (needs its port)")
    reply_tls: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Reply to the caller over TLS: auto = when studies arrive over TLS (dicom.tls.enabled), with the "
                    "node's certificate and dicom.tls.ca_file; on; off",
    )
    calling_ae_title: str | None = Field(None, description="AE title we call with; empty = dicom.ae_title")
    max_attempts: int = Field(12, ge=1, description="With the default back-off, 12 attempts span more than an hour")
    backoff_initial_s: float = Field(10, gt=0)
    backoff_max_s: float = Field(900, gt=0)
    timeout_s: float = Field(30, gt=0)


class Executor(_Section):
    kind: Literal["local", "celery"] = "local"
    broker_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="Celery broker (Redis)")
    queue: str = "dsm-inference"
    heartbeat_interval_s: float = Field(10, gt=0, description="A running job refreshes its heartbeat this often")
    stale_after_s: float = Field(60, gt=0, description="A running job without heartbeat for this long is requeued")
    visibility_timeout_s: float = Field(
        900, gt=0, description="Redis redelivers an unacknowledged task after this long (duplicates are skipped)"
    )
    max_attempts: int = Field(3, ge=1, description="A job interrupted this many times fails")


class Http(_Section):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="Health, metrics and status page; loopback by default")
    port: int = Field(8080, ge=0, le=65535)
    request_timeout_s: float = Field(
        10, gt=0, description="A client's request line and headers must arrive within this; also each read/write"
    )
    max_connections: int = Field(32, ge=1, description="HTTP connections served at once; more are closed at accept")


class Logging(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stdout: bool = True
    file: bool = Field(True, description="Also write JSON lines to DATA_DIR/logs/dsm-node.jsonl")


class Syslog(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(514, description="514 for udp/tcp; 6514 is the RFC 5425 port for tls")
    protocol: Literal["udp", "tcp", "tls"] = Field(
        "udp", description="udp (RFC 5426), tcp (RFC 6587) or tls (RFC 5425, as ATNA expects)"
    )
    ca_file: Path | None = Field(None, description="tls: CA bundle that verifies the collector (empty = system CAs)")
    cert_file: Path | None = Field(None, description="tls: client certificate, if the collector asks for one")
    key_file: Path | None = Field(None, description="tls: the client certificate's private key")
    server_name: str | None = Field(None, description="tls: name expected in the collector's certificate (empty = host)")


class Audit(_Section):
    syslog: Syslog = Field(default_factory=Syslog)


class Retention(_Section):
    enabled: bool = True
    delivered_max_age_h: float = Field(72, ge=0, description="Delete spool + results this long after delivery")
    disk_high_watermark: float = Field(0.9, gt=0, le=1, description="Above this disk use, delete delivered data oldest first")
    interval_s: float = Field(600, gt=0)


_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("dsm_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DSM_NODE__", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    dicom: Dicom = Field(default_factory=Dicom)
    storage: Storage = Field(default_factory=Storage)
    database: Database = Field(default_factory=Database)
    completeness: Completeness = Field(default_factory=Completeness)
    selection: Selection = Field(default_factory=Selection)
    inference: Inference = Field(default_factory=Inference)
    results: Results = Field(default_factory=Results)
    delivery: Delivery = Field(default_factory=Delivery)
    notifications: Notifications = Field(default_factory=Notifications)
    executor: Executor = Field(default_factory=Executor)
    http: Http = Field(default_factory=Http)
    logging: Logging = Field(default_factory=Logging)
    audit: Audit = Field(default_factory=Audit)
    retention: Retention = Field(default_factory=Retention)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _reply_tls_files(self) -> Settings:
        tls = self.dicom.tls
        if self.delivery.reply_tls == "on" and (tls.cert_file is None or tls.key_file is None):
            raise ValueError("delivery.reply_tls 'on' needs dicom.tls.cert_file and dicom.tls.key_file "
                             "(the node's certificate is its client certificate)")
        return self

    # Derived locations -------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        if self.database.url is not None and self.database.url.get_secret_value():
            return self.database.url.get_secret_value()
        return f"sqlite:///{(self.storage.data_dir / 'dsm-node.db').resolve()}"

    @property
    def checkpoint_path(self) -> Path:
        return self.inference.checkpoint or DEFAULT_WEIGHTS


def _deep_set(target: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the effective settings; raise ConfigError naming the bad key.

    ``overrides`` maps dotted keys (``dicom.port``) to values from command-line flags.
    """
    path = Path(config_file) if config_file else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    init: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _deep_set(init, key, value)
    unknown = unknown_environment_keys()
    if unknown:
        raise ConfigError("invalid configuration (environment DSM_NODE__* variables):\n" + "\n".join(
            f"  {key}: unknown key (from {name})" for name, key in unknown))
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None
    finally:
        _CONFIG_FILE.reset(token)


ENV_PREFIX = "DSM_NODE__"


def unknown_environment_keys(environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable, dotted key) of every ``DSM_NODE__*`` variable that names no setting.

    pydantic-settings only looks up the variables of known fields, so a misspelt section
    (``DSM_NODE__DATABSE__URL``) would otherwise be ignored without a word.
    """
    found = []
    for name in sorted(os.environ if environ is None else environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        model: type[BaseModel] | None = Settings
        for i, part in enumerate(parts):
            fields = {k.lower(): f for k, f in model.model_fields.items()} if model is not None else {}
            renamed = getattr(model, "renamed_keys", {})
            field_info = fields.get(renamed.get(part, part))
            if field_info is None:
                found.append((name, ".".join(parts[: i + 1])))
                break
            ann = field_info.annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return found


def _explain(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where} (environment DSM_NODE__* variables and flags included):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


_SECRET_KEY = re.compile(r"(password|secret|token|passphrase)", re.I)
_URL_CRED = re.compile(r"(://[^:/@]*:)([^@/]*)(@)")
# Query parameters that carry secrets (libpq sslpassword/password, redis password, tokens).
_URL_SECRET_PARAM = re.compile(r"([?&;](?:[^=&;#]*(?:pass|secret|token|auth|credential|apikey|api_key)[^=&;#]*)=)([^&;#]*)", re.I)


def mask_url(text: str) -> str:
    """``text`` with every password or token in a URL replaced by ``***`` (userinfo and query)."""
    return _URL_SECRET_PARAM.sub(r"\1***", _URL_CRED.sub(r"\1***\3", text))


def display_url(url: str) -> str:
    """A database URL with its password masked, for messages."""
    return _URL_CRED.sub(r"\1***\3", url)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data with secrets masked, for ``check-config``."""

    def mask(obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            return {k: mask(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [mask(v, key) for v in obj]
        if isinstance(obj, SecretStr):
            if not obj.get_secret_value():
                return ""
            if _SECRET_KEY.search(key):  # a password or token itself
                return "***"
            return mask_url(obj.get_secret_value())
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, str) and (_SECRET_KEY.search(key)):
            return "***"
        if isinstance(obj, str) and "://" in obj:
            return mask_url(obj)
        return obj

    return mask(settings.model_dump(mode="python"))


def config_warnings(settings: Settings, config_file: str | Path | None) -> list[str]:
    """Things that are valid but worth an administrator's attention."""
    warnings: list[str] = []
    if config_file:
        mode = Path(config_file).stat().st_mode
        text = Path(config_file).read_text()
        has_secret = bool(_URL_CRED.search(text)) or bool(_SECRET_KEY.search(text))
        if has_secret and mode & stat.S_IROTH:
            warnings.append(f"{config_file} contains credentials and is world-readable (chmod 600 it)")
    if not settings.dicom.peers and settings.dicom.host not in ("127.0.0.1", "::1", "localhost"):
        warnings.append("dicom.host listens beyond loopback but no peers are configured: only loopback may associate")
    if settings.http.host not in ("127.0.0.1", "::1", "localhost"):
        warnings.append(f"http.host is {settings.http.host}: metrics and the status page are reachable from the network")
    if not settings.storage.fsync:
        warnings.append("storage.fsync is off: a power loss can lose instances already acknowledged")
    if settings.inference.checkpoint is None:
        warnings.append("inference.checkpoint is empty: the bundled DEMONSTRATION weights are used (not for clinical use)")
    for what, key in private_keys(settings):
        warnings += _key_warnings(what, key)
    return warnings


def private_keys(settings: Settings) -> list[tuple[str, Path]]:
    """Every private key file the configuration names, with the key that names it."""
    keys = [("dicom.tls.key_file", settings.dicom.tls.key_file), ("audit.syslog.key_file", settings.audit.syslog.key_file)]
    keys += [(f"delivery.destinations.{i}.tls.key_file", d.tls.key_file)
             for i, d in enumerate(settings.delivery.destinations)]
    return [(what, path) for what, path in keys if path is not None]


def _key_warnings(what: str, key: Path) -> list[str]:
    """A key may be readable by its owner and by a group this process belongs to (root:dsm 0640
    with the node running as dsm); never by others, nor writable by anyone but its owner."""
    try:
        st = key.stat()
    except OSError as exc:
        return [f"{what}: {key} cannot be read ({exc.strerror})"]
    own_groups = {os.getgid(), os.getegid(), *os.getgroups()}
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        return [f"{what}: {key} (private key) is readable or writable by others (chmod 0600, or 0640 for the node's group)"]
    if st.st_mode & stat.S_IWGRP or (st.st_mode & stat.S_IRGRP and st.st_gid not in own_groups):
        return [f"{what}: {key} (private key) is accessible to group {st.st_gid}, which this process is not in"]
    return []


def env_overrides_present() -> list[str]:
    return sorted(k for k in os.environ if k.startswith("DSM_NODE__"))
