-- The cache claim of rocket_server_sessions. An instance with a cache serves sessions from its
-- memory only while it holds this claim, and it may claim only while no other instance is
-- alive on the database. Every statement that changes or deletes existing sessions locks the
-- claim's row FOR SHARE, and changes nothing while another instance's claim is valid: a claim
-- can never be made or renewed while such a change is in flight, and no change is made while
-- another instance's claim is valid. Times are the database's clock.

-- One row: who holds the claim (`holder`, an instance's random tag), until when, and how many
-- times it was newly taken (`epoch`).
CREATE TABLE IF NOT EXISTS rocket_sessions_claim (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    holder bigint,
    until  timestamptz NOT NULL DEFAULT '-infinity',
    epoch  bigint NOT NULL DEFAULT 0
);

INSERT INTO rocket_sessions_claim (one) VALUES (true) ON CONFLICT (one) DO NOTHING;

-- The instances using the database: each renews its row every second while it runs, and
-- deletes it when it shuts down.
CREATE TABLE IF NOT EXISTS rocket_sessions_instances (
    instance    bigint PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
