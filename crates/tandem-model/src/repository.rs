pub struct ModelRepository; pub enum VersionPolicy{} pub enum VersionSpec{}
