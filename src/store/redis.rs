//! The Redis store, on a `rocket_db_pools` `deadpool_redis` pool.
//!
//! A session is one hash, `<prefix>s:<hex of the store key>`: the fields `created`, `active`
//! and `expires` (Unix seconds), and one field per session key, its name after a `=`. Its
//! Redis TTL is its expiry, so Redis deletes it when it expires and nothing needs sweeping. A
//! load is one `HGETALL`; every write is one script (`EVALSHA`), which Redis runs atomically, so
//! a write applies its change set to the session as it is then, key by key.
//!
//! An indexed key's values are filed in sorted sets, `<prefix>i:<key>:<SHA-1 of the value>`,
//! whose members are the sessions holding that value, scored by their expiry. The write scripts
//! keep them: a session leaves the set of its old value when the value changes, when it is
//! destroyed and when its id cycles; the set's own TTL is its longest member's. A member whose
//! session Redis expired is dropped at the next lookup of that set.
//!
//! Each script is loaded at launch (`SCRIPT LOAD`) and called by its SHA-1 (`EVALSHA`); a Redis
//! that lost it (a restart) gets the script's text once more (`EVAL`).
//!
//! The store keeps one multiplexed connection taken from the pool and shares it: concurrent
//! calls are pipelined on it, and no call pays the pool's check of a connection it hands out
//! (a `PING` round trip each). A connection that fails is dropped and the next call takes a
//! new one.

use std::sync::RwLock;
use std::time::Duration;

use rocket::figment::Figment;
use rocket::tokio::sync::Mutex as AsyncMutex;
use rocket::tokio::time::timeout;
use rocket_db_pools::deadpool_redis::redis::aio::MultiplexedConnection;
use rocket_db_pools::deadpool_redis::redis::{self, FromRedisValue, RedisError, ToRedisArgs};
use rocket_db_pools::deadpool_redis::{Connection, Pool};

use super::{ChangeSet, SessionRecord, SessionStore, SessionSummary};
use crate::config::RedisStoreConfig;
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;

/// The longest a call waits for Redis (a connection, then the answer) before it answers 503.
const WAIT: Duration = Duration::from_secs(3);

/// Sessions scanned per `SCAN` step, for lookups of a key that is not indexed and for sweeps.
const SCAN_COUNT: usize = 500;

/// What every script shares. `ARGV`: 1 now, 2 expiry, 3 key prefix, 4 the session's member
/// (hex store key), 5 a second value (the creation time of `create`, the new member of
/// `cycle`), 6 the number `n` of indexed keys, 7 to `6 + n` their names, then the changes:
/// `s name value` sets, `r name` removes.
const PRELUDE: &str = r#"
local now = tonumber(ARGV[1])
local expires = tonumber(ARGV[2])
local prefix = ARGV[3]
local nindexed = tonumber(ARGV[6])
local function ix(name, value)
  return prefix .. 'i:' .. name .. ':' .. redis.sha1hex(value)
end
local function unindex(key, member)
  for i = 1, nindexed do
    local name = ARGV[6 + i]
    local value = redis.call('HGET', key, '=' .. name)
    if value then redis.call('ZREM', ix(name, value), member) end
  end
end
local function live(key)
  local at = redis.call('HGET', key, 'expires')
  return at and tonumber(at) > now
end
local function write(key, member)
  local i = 7 + nindexed
  while i <= #ARGV do
    if ARGV[i] == 's' then
      redis.call('HSET', key, '=' .. ARGV[i + 1], ARGV[i + 2])
      i = i + 3
    else
      redis.call('HDEL', key, '=' .. ARGV[i + 1])
      i = i + 2
    end
  end
  local ttl = math.max(expires - now, 1)
  redis.call('HSET', key, 'active', ARGV[1], 'expires', ARGV[2])
  redis.call('EXPIRE', key, ttl)
  for j = 1, nindexed do
    local name = ARGV[6 + j]
    local value = redis.call('HGET', key, '=' .. name)
    if value then
      local set = ix(name, value)
      redis.call('ZADD', set, expires, member)
      if redis.call('TTL', set) < ttl then redis.call('EXPIRE', set, ttl) end
    end
  end
end
"#;

const CREATE: &str = r#"
if live(KEYS[1]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  unindex(KEYS[1], ARGV[4])
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'created', ARGV[5])
write(KEYS[1], ARGV[4])
return 1
"#;

const UPDATE: &str = r#"
if not live(KEYS[1]) then return 0 end
unindex(KEYS[1], ARGV[4])
write(KEYS[1], ARGV[4])
return 1
"#;

const CYCLE: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 or not live(KEYS[1]) then return 0 end
unindex(KEYS[1], ARGV[4])
redis.call('RENAME', KEYS[1], KEYS[2])
write(KEYS[2], ARGV[5])
return 1
"#;

const DESTROY: &str = r#"
unindex(KEYS[1], ARGV[4])
redis.call('DEL', KEYS[1])
return 1
"#;

/// What both lookups share. The arguments after the indexed keys' names: the session key
/// `name`, the `value` it must hold, and the `mode`: `list` answers `member, created, active,
/// expires` for each session live at `now` that holds it, `destroy` deletes them and answers
/// how many, `sweep` (by scan only) deletes the sessions expired at `now`.
const FIND: &str = r#"
local name, value, mode = ARGV[7 + nindexed], ARGV[8 + nindexed], ARGV[9 + nindexed]
local found, out = 0, {}
local function delete(key, member)
  unindex(key, member)
  redis.call('DEL', key)
  found = found + 1
end
-- Lists or deletes the session `key` if its `name` holds `value`; whether it does.
local function visit(key, member)
  local h = redis.call('HMGET', key, '=' .. name, 'created', 'active', 'expires')
  if h[1] ~= value then return false end
  if mode == 'destroy' then
    delete(key, member)
  elseif h[4] and tonumber(h[4]) > now then
    table.insert(out, member)
    table.insert(out, h[2])
    table.insert(out, h[3])
    table.insert(out, h[4])
  end
  return true
end
local function answer()
  if mode == 'list' then return out end
  return found
end
"#;

/// [`FIND`] through the index set of `name`'s `value`. Members whose session is gone or holds
/// another value now leave the set.
const BY_INDEX: &str = r#"
local set = ix(name, value)
for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
  if not visit(prefix .. 's:' .. member, member) then
    redis.call('ZREM', set, member)
  end
end
return answer()
"#;

/// [`FIND`] on the sessions `KEYS` (one `SCAN` step), for a key that is not indexed and for
/// sweeps.
const BY_SCAN: &str = r#"
for _, key in ipairs(KEYS) do
  local member = string.sub(key, #prefix + 3)
  if mode ~= 'sweep' then
    visit(key, member)
  else
    local at = redis.call('HGET', key, 'expires')
    if at and tonumber(at) <= now then delete(key, member) end
  end
end
return answer()
"#;

/// Sessions in Redis (the `redis` feature).
///
/// Built by the fairing from `store = { kind = "redis", ... }` (see [`RedisStoreConfig`]), on a
/// pool it initialises from `[<profile>.databases.<database>]` (see
/// [`pool_from_figment`](Self::pool_from_figment)) or on the app's own pool (see
/// [`Sessions::with_database`](crate::Sessions::with_database)).
pub struct RedisStore {
    pool: Pool,
    /// The shared connection; `None` after a failure, until the next call takes a new one.
    conn: RwLock<Option<MultiplexedConnection>>,
    /// Held while taking a new connection, so that a failure makes one call reconnect, not all.
    connecting: AsyncMutex<()>,
    prefix: String,
    ttl: u64,
    indexed: Vec<String>,
    scripts: Scripts,
}

/// A script's text (with [`PRELUDE`]) and the SHA-1 Redis knows it by.
struct Script {
    body: String,
    sha: String,
}

struct Scripts {
    create: Script,
    update: Script,
    cycle: Script,
    destroy: Script,
    by_index: Script,
    by_scan: Script,
}

/// One call of a script: its keys and arguments.
struct Call<'a> {
    script: &'a Script,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    fn key(&mut self, key: String) -> &mut Self {
        self.keys.push(key);
        self
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `EVALSHA <sha> ...` or `EVAL <body> ...`.
    fn command(&self, verb: &str, script: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len()).arg(&self.keys);
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// What a Redis error means for the caller.
fn classify(e: RedisError) -> StoreError {
    let kind = if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
    {
        StoreErrorKind::Unavailable
    } else {
        match e.kind() {
            redis::ErrorKind::BusyLoadingError | redis::ErrorKind::TryAgain => {
                StoreErrorKind::Unavailable
            }
            redis::ErrorKind::TypeError => StoreErrorKind::Corrupt,
            _ => StoreErrorKind::Other,
        }
    };
    StoreError::new(kind, "Redis").with_source(e)
}

fn unavailable(what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("Redis: {what} took longer than {WAIT:?}"),
    )
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, format!("Redis: {what}"))
}

fn number(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(&format!("a session's `{what}` is not a number")))
}

impl RedisStore {
    /// A pool initialised from `[<profile>.databases.<name>]` of `figment`, as `rocket_db_pools`
    /// initialises it (`url`, `max_connections`, `connect_timeout`, `idle_timeout`).
    pub async fn pool_from_figment(figment: &Figment, name: &str) -> Result<Pool, StoreError> {
        let figment = super::database_figment(figment, name);
        <Pool as rocket_db_pools::Pool>::init(&figment)
            .await
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, format!("databases.{name}")).with_source(e)
            })
    }

    /// A store on `pool`, loading its scripts into Redis (which checks that Redis answers).
    pub async fn new(pool: Pool, config: &RedisStoreConfig) -> Result<RedisStore, StoreError> {
        let script = |body: &str| Script {
            body: format!("{PRELUDE}{body}"),
            sha: String::new(),
        };
        let mut store = RedisStore {
            pool,
            conn: RwLock::new(None),
            connecting: AsyncMutex::new(()),
            prefix: config.key_prefix.clone(),
            ttl: config.ttl,
            indexed: config.indexed_keys.clone(),
            scripts: Scripts {
                create: script(CREATE),
                update: script(UPDATE),
                cycle: script(CYCLE),
                destroy: script(DESTROY),
                by_index: script(&format!("{FIND}{BY_INDEX}")),
                by_scan: script(&format!("{FIND}{BY_SCAN}")),
            },
        };
        let mut conn = store.connection().await?;
        let Scripts {
            create,
            update,
            cycle,
            destroy,
            by_index,
            by_scan,
        } = &mut store.scripts;
        for script in [create, update, cycle, destroy, by_index, by_scan] {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(&script.body);
            script.sha = match timeout(WAIT, load.query_async(&mut conn)).await {
                Ok(answer) => answer.map_err(classify)?,
                Err(_) => return Err(unavailable("loading the scripts")),
            };
        }
        Ok(store)
    }

    /// The pool this store takes its connection from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The shared connection, taking a new one from the pool when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(conn) = self.shared() {
            return Ok(conn);
        }
        let _turn = self.connecting.lock().await;
        if let Some(conn) = self.shared() {
            return Ok(conn);
        }
        let conn = match timeout(WAIT, self.pool.get()).await {
            Ok(Ok(conn)) => Connection::take(conn),
            Ok(Err(e)) => {
                return Err(StoreError::new(StoreErrorKind::Unavailable, "Redis").with_source(e))
            }
            Err(_) => return Err(unavailable("a connection")),
        };
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn shared(&self) -> Option<MultiplexedConnection> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Awaits one call to Redis, bounded by [`WAIT`]; a failed or silent connection is dropped.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
        what: &str,
    ) -> Result<T, StoreError> {
        self.answer(timeout(WAIT, call).await, what)
    }

    /// What [`run`](Self::run) makes of an answer, or of its absence.
    fn answer<T>(
        &self,
        answer: Result<Result<T, RedisError>, rocket::tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, StoreError> {
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.forget();
                }
                Err(classify(e))
            }
            Err(_) => {
                self.forget();
                Err(unavailable(what))
            }
        }
    }

    fn forget(&self) {
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn session_key(&self, member: &str) -> String {
        format!("{}s:{member}", self.prefix)
    }

    /// A call of `script` on the session `key`, with the shared arguments (see [`PRELUDE`]).
    fn call<'a>(
        &self,
        script: &'a Script,
        key: &StoreKey,
        now: u64,
        expires: u64,
        second: &str,
    ) -> Call<'a> {
        let member = hex::encode(key.0);
        let mut call = Call {
            script,
            keys: vec![self.session_key(&member)],
            args: Vec::with_capacity(16),
        };
        call.arg(now)
            .arg(expires)
            .arg(&self.prefix)
            .arg(&member)
            .arg(second);
        self.indexed_names(&mut call);
        call
    }

    fn indexed_names(&self, call: &mut Call<'_>) {
        call.arg(self.indexed.len());
        for name in &self.indexed {
            call.arg(name);
        }
    }

    /// Runs `call` (by its SHA-1, and by its text if Redis lost it).
    async fn eval<T: FromRedisValue>(&self, call: &Call<'_>) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let by_sha = call.command("EVALSHA", &call.script.sha);
        match timeout(WAIT, by_sha.query_async(&mut conn)).await {
            Ok(Err(e)) if e.kind() == redis::ErrorKind::NoScriptError => {
                let by_text = call.command("EVAL", &call.script.body);
                self.run(by_text.query_async(&mut conn), "a script").await
            }
            answer => self.answer(answer, "a script"),
        }
    }

    /// Runs a write script (whose answer is 1 done, 0 refused) with `changes` after its
    /// arguments.
    async fn write(&self, mut call: Call<'_>, changes: &ChangeSet) -> Result<bool, StoreError> {
        for (name, value) in changes.iter() {
            match value {
                Some(value) => call.arg("s").arg(name).arg(value),
                None => call.arg("r").arg(name),
            };
        }
        let done: i64 = self.eval(&call).await?;
        Ok(done == 1)
    }

    /// Finds the sessions whose `name` holds `value`: `mode` is `"list"` or `"destroy"`.
    async fn find(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
        mode: &str,
    ) -> Result<redis::Value, StoreError> {
        let call = |script, keys| {
            let mut call = Call {
                script,
                keys,
                args: Vec::new(),
            };
            call.arg(now).arg(0).arg(&self.prefix).arg("").arg("");
            self.indexed_names(&mut call);
            call.arg(name).arg(value).arg(mode);
            call
        };
        if self.indexed.iter().any(|k| k == name) {
            return self.eval(&call(&self.scripts.by_index, Vec::new())).await;
        }
        // Not indexed: every session, one SCAN step at a time.
        let mut conn = self.connection().await?;
        let pattern = format!("{}s:*", self.prefix);
        let (mut cursor, mut found, mut listed) = (0u64, 0i64, Vec::new());
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut conn),
                    "a SCAN step",
                )
                .await?;
            if !keys.is_empty() {
                match self.eval(&call(&self.scripts.by_scan, keys)).await? {
                    redis::Value::Int(n) => found += n,
                    redis::Value::Bulk(items) => listed.extend(items),
                    other => return Err(corrupt(&format!("a lookup answered {other:?}"))),
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(match mode {
            "list" => redis::Value::Bulk(listed),
            _ => redis::Value::Int(found),
        })
    }
}

#[rocket::async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.connection().await?;
        let fields: Vec<Vec<u8>> = self
            .run(
                redis::cmd("HGETALL")
                    .arg(self.session_key(&hex::encode(key.0)))
                    .query_async(&mut conn),
                "a load",
            )
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let (mut created, mut expires, mut data) = (None, None, Vec::new());
        for pair in fields.chunks_exact(2) {
            match pair[0].as_slice() {
                b"created" => created = Some(number(&pair[1], "created")?),
                b"expires" => expires = Some(number(&pair[1], "expires")?),
                [b'=', name @ ..] => {
                    let name = String::from_utf8(name.to_vec())
                        .map_err(|_| corrupt("a session key's name is not UTF-8"))?;
                    data.push((name, pair[1].clone()));
                }
                _ => {}
            }
        }
        let (Some(created), Some(expires)) = (created, expires) else {
            return Err(corrupt("a session hash lacks its times"));
        };
        if expires <= now {
            return Ok(None);
        }
        Ok(Some(SessionRecord {
            created,
            expires,
            data,
        }))
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let expires = changes.expiry(now, self.ttl);
        let call = self.call(
            &self.scripts.create,
            key,
            now,
            expires,
            &created.to_string(),
        );
        self.write(call, changes).await
    }

    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let expires = changes.expiry(now, self.ttl);
        let call = self.call(&self.scripts.update, key, now, expires, "");
        self.write(call, changes).await
    }

    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let expires = changes.expiry(now, self.ttl);
        let member = hex::encode(new.0);
        let mut call = self.call(&self.scripts.cycle, old, now, expires, &member);
        call.key(self.session_key(&member));
        self.write(call, changes).await
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        let call = self.call(&self.scripts.destroy, key, 0, 0, "");
        self.write(call, &ChangeSet::new()).await.map(|_| ())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        match self.find(name, value, 0, "destroy").await? {
            redis::Value::Int(n) => Ok(n.max(0) as u64),
            other => Err(corrupt(&format!("a deletion answered {other:?}"))),
        }
    }

    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let items: Vec<Vec<u8>> =
            redis::from_redis_value(&self.find(name, value, now, "list").await?)
                .map_err(classify)?;
        items
            .chunks_exact(4)
            .map(|s| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(&s[0], &mut key)
                    .map_err(|_| corrupt("an index member is not a store key"))?;
                Ok(SessionSummary {
                    key: StoreKey(key),
                    created: number(&s[1], "created")?,
                    active: number(&s[2], "active")?,
                    expires: number(&s[3], "expires")?,
                })
            })
            .collect()
    }

    /// Redis deletes sessions as they expire, so the fairing never sweeps this store; a sweep
    /// called anyway scans every session (`SCAN`) and deletes those expired at `now`.
    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        match self.find("", b"", now, "sweep").await? {
            redis::Value::Int(n) => Ok(n.max(0) as u64),
            other => Err(corrupt(&format!("a sweep answered {other:?}"))),
        }
    }
}
