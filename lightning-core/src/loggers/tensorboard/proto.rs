//! The few TensorBoard protobuf messages an event file of scalars and hparams needs, derived
//! with `prost` from these definitions (field numbers as in tensorboard 2.21's
//! `compat/proto/event.proto`, `summary.proto`, `plugins/hparams/api.proto`,
//! `plugin_data.proto` and `google/protobuf/struct.proto`). Fields we never write are left
//! out; a reader skips nothing it needs. Fields are declared in field-number order, the
//! order Python's protobuf serializes them, so the bytes match torch's `SummaryWriter`'s.

/// `tensorboard.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
    /// Which program wrote the file (first event only).
    #[prost(message, optional, tag = "10")]
    pub source_metadata: Option<SourceMetadata>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The file's format version, `"brain.Event:2"` (the first event).
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Summary values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorboard.SourceMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceMetadata {
    /// The writer's name.
    #[prost(string, tag = "1")]
    pub writer: String,
}

/// `tensorboard.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorboard.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The tag (the chart's name).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A scalar (`Summary.Value.simple_value`, what `add_scalar` writes).
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// Plugin metadata (the hparams plugin's data).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorboard.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// Which plugin reads the value, and its data.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorboard.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `"hparams"`.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// A serialized [`HParamsPluginData`].
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorboard.hparams.HParamsPluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamsPluginData {
    /// `PLUGIN_DATA_VERSION` (0).
    #[prost(int32, tag = "1")]
    pub version: i32,
    /// One of the three hparams records.
    #[prost(oneof = "HParamsData", tags = "2, 3, 4")]
    pub data: Option<HParamsData>,
}

/// `HParamsPluginData.data`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HParamsData {
    /// The hparams and metrics of the experiment (`_hparams_/experiment`).
    #[prost(message, tag = "2")]
    Experiment(Experiment),
    /// This run's values (`_hparams_/session_start_info`).
    #[prost(message, tag = "3")]
    SessionStartInfo(SessionStartInfo),
    /// How the run ended (`_hparams_/session_end_info`).
    #[prost(message, tag = "4")]
    SessionEndInfo(SessionEndInfo),
}

/// `tensorboard.hparams.Experiment`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Experiment {
    /// One per hyperparameter.
    #[prost(message, repeated, tag = "4")]
    pub hparam_infos: Vec<HParamInfo>,
    /// One per metric.
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
}

/// `tensorboard.hparams.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// `DATA_TYPE_UNSET`.
    Unset = 0,
    /// `DATA_TYPE_STRING`.
    String = 1,
    /// `DATA_TYPE_BOOL`.
    Bool = 2,
    /// `DATA_TYPE_FLOAT64`.
    Float64 = 3,
}

/// `tensorboard.hparams.HParamInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamInfo {
    /// The hyperparameter's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(enumeration = "DataType", tag = "4")]
    pub r#type: i32,
}

/// `tensorboard.hparams.MetricInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricInfo {
    /// The metric's tag.
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
}

/// `tensorboard.hparams.MetricName`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricName {
    /// The group (run subdirectory; empty).
    #[prost(string, tag = "1")]
    pub group: String,
    /// The scalar's tag.
    #[prost(string, tag = "2")]
    pub tag: String,
}

/// `tensorboard.hparams.SessionStartInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionStartInfo {
    /// `map<string, google.protobuf.Value> hparams = 1`, written as its wire form (repeated
    /// key/value entries) to keep the hyperparameters' order.
    #[prost(message, repeated, tag = "1")]
    pub hparams: Vec<HparamsEntry>,
}

/// One entry of `SessionStartInfo.hparams`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HparamsEntry {
    /// The name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<ProtoValue>,
}

/// `google.protobuf.Value` (the kinds an hparam can be).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoValue {
    /// The value.
    #[prost(oneof = "Kind", tags = "2, 3, 4")]
    pub kind: Option<Kind>,
}

/// `google.protobuf.Value.kind`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A number.
    #[prost(double, tag = "2")]
    Number(f64),
    /// A string.
    #[prost(string, tag = "3")]
    String(String),
    /// A bool.
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// `tensorboard.hparams.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    /// `STATUS_UNKNOWN`.
    Unknown = 0,
    /// `STATUS_SUCCESS`.
    Success = 1,
    /// `STATUS_FAILURE`.
    Failure = 2,
    /// `STATUS_RUNNING`.
    Running = 3,
}

/// `tensorboard.hparams.SessionEndInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEndInfo {
    /// How the run ended.
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
}
