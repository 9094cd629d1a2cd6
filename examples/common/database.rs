//! The one PostgreSQL connection of an example receiver, shared by its
//! requests one at a time and opened again when the database restarted
//! (walhook retries meanwhile). Enough for an example; use a pool such as
//! deadpool-postgres for more.

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Error, NoTls};

pub struct Database {
    url: String,
    client: Mutex<Client>,
}

impl Database {
    pub async fn connect(url: String) -> Result<Database, Error> {
        let client = Mutex::new(open(&url).await?);
        Ok(Database { url, client })
    }

    /// The connection, for one request at a time; opened again first if
    /// the database closed it.
    pub async fn lock(&self) -> Result<MutexGuard<'_, Client>, Error> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = open(&self.url).await?;
        }
        Ok(client)
    }
}

async fn open(url: &str) -> Result<Client, Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
