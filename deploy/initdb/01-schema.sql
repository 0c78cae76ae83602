-- The example schema of docker-compose.yml, run once by the postgres image on an empty data
-- directory (psql -v ON_ERROR_STOP=1, into the database POSTGRES_DB names).
--
-- The domain of the prototype pgreactive comes from: organizations (tenants) with agents that
-- send messages and keep memories. Every tenant table carries organization_id, the default
-- cache.scope_columns, so a write pinned to one organization leaves the other's cached reads
-- alone:
--
--   psql postgresql://postgres@127.0.0.1:6543/app
--   SELECT * FROM agents WHERE organization_id = 'org-acme';    -- twice: the second is a hit
--   UPDATE agents SET status = 'busy' WHERE organization_id = 'org-globex' AND id = 'agent-gus';
--   SELECT * FROM agents WHERE organization_id = 'org-acme';    -- still a hit
--
-- Foreign keys carry organization_id too, so a message or memory can only point at an agent
-- of its own organization.

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id               text PRIMARY KEY,
    organization_id  text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             text NOT NULL,
    status           text NOT NULL DEFAULT 'idle'
                     CHECK (status IN ('idle', 'busy', 'offline')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id)
);

CREATE TABLE messages (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  text NOT NULL,
    from_agent_id    text NOT NULL,
    to_agent_id      text,
    body             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (organization_id, from_agent_id)
        REFERENCES agents (organization_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id, to_agent_id)
        REFERENCES agents (organization_id, id) ON DELETE CASCADE
);

CREATE TABLE memories (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  text NOT NULL,
    agent_id         text NOT NULL,
    content          text NOT NULL,
    importance       smallint NOT NULL DEFAULT 1 CHECK (importance BETWEEN 1 AND 5),
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (organization_id, agent_id)
        REFERENCES agents (organization_id, id) ON DELETE CASCADE
);

CREATE INDEX agents_organization_id_idx ON agents (organization_id);
CREATE INDEX messages_organization_id_created_at_idx ON messages (organization_id, created_at);
CREATE INDEX memories_organization_id_agent_id_idx ON memories (organization_id, agent_id);

INSERT INTO organizations (id, name) VALUES
    ('org-acme', 'Acme Corp'),
    ('org-globex', 'Globex');

INSERT INTO agents (id, organization_id, name, status) VALUES
    ('agent-ada', 'org-acme', 'Ada', 'idle'),
    ('agent-bob', 'org-acme', 'Bob', 'busy'),
    ('agent-gus', 'org-globex', 'Gus', 'idle');

INSERT INTO messages (organization_id, from_agent_id, to_agent_id, body) VALUES
    ('org-acme', 'agent-ada', 'agent-bob', 'Can you summarise the Q3 tickets?'),
    ('org-acme', 'agent-bob', 'agent-ada', 'On it: 42 tickets, 3 still open.'),
    ('org-globex', 'agent-gus', NULL, 'Nightly report published.');

INSERT INTO memories (organization_id, agent_id, content, importance) VALUES
    ('org-acme', 'agent-ada', 'Bob handles ticket summaries.', 3),
    ('org-acme', 'agent-bob', 'Q3 has 3 open tickets.', 2),
    ('org-globex', 'agent-gus', 'Reports go out at 02:00 UTC.', 4);
