//! Query strings the API's handlers share.

use serde::Deserialize;

/// `?session=S`: the session whose tasks to include — id, unique id prefix or name.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionQuery {
    pub session: Option<String>,
}
