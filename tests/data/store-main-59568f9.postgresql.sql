-- The schema salon's store created at commit 59568f9 (before Alembic), as metadata.create_all
-- emitted it for PostgreSQL, with rows: the upgrade test starts from this.
CREATE TABLE projects (
	api_key VARCHAR(64) NOT NULL, 
	api_secret VARCHAR(128) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	created_at BIGINT NOT NULL, 
	PRIMARY KEY (api_key)
);
CREATE TABLE sessions (
	session_id VARCHAR(255) NOT NULL, 
	api_key VARCHAR(64) NOT NULL, 
	media_mode VARCHAR(16) NOT NULL, 
	archive_mode VARCHAR(16) NOT NULL, 
	location VARCHAR(64) NOT NULL, 
	e2ee BOOLEAN NOT NULL, 
	created_at BIGINT NOT NULL, 
	PRIMARY KEY (session_id), 
	FOREIGN KEY(api_key) REFERENCES projects (api_key)
);
CREATE INDEX ix_sessions_api_key ON sessions (api_key);
INSERT INTO projects VALUES ('47000001', '3f1c0e6a9b5d4c2e8f7a6b5c4d3e2f1a0b9c8d7e', 'first', 1796331888037);
INSERT INTO projects VALUES ('47000002', '0123456789abcdef0123456789abcdef', 'second', 1796331888064);
INSERT INTO sessions VALUES ('1_MX40NzAwMDAwMX5-session0', '47000001', 'routed', 'manual', '', false, 1796331888134);
INSERT INTO sessions VALUES ('1_MX40NzAwMDAwMX5-session1', '47000001', 'relayed', 'manual', '10.0.0.1', false, 1796331888145);
INSERT INTO sessions VALUES ('1_MX40NzAwMDAwMX5-session2', '47000002', 'routed', 'always', '', true, 1796331888155);
