-- Session windows with a 10 s gap per user: rows closer than the gap join a session, a row
-- that bridges two sessions merges them, and a session is emitted once the watermark
-- passes its last row + gap. A checkpoint in the middle keeps open sessions.
== sql
CREATE TABLE clicks (user_id TEXT, page TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'clicks');
INSERT INTO visits
SELECT user_id, window_start, window_end, count(*) AS clicks, count(DISTINCT page) AS pages
FROM SESSION(clicks, ts, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end;
== input
0 {"user_id":"u1","page":"a","ts":1000}
0 {"user_id":"u1","page":"b","ts":5000}
0 {"user_id":"u2","page":"a","ts":6000}
0 {"user_id":"u1","page":"a","ts":30000}
== restart
== input
0 {"user_id":"u1","page":"c","ts":22000}
0 {"user_id":"u2","page":"b","ts":40000}
== input
0 {"user_id":"u1","page":"d","ts":70000}
== expected
result visits key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:01","window_end":"1970-01-01T00:00:15","clicks":2,"pages":2}
result visits key=u2 {"user_id":"u2","window_start":"1970-01-01T00:00:06","window_end":"1970-01-01T00:00:16","clicks":1,"pages":1}
restarted
result visits key=u1 {"user_id":"u1","window_start":"1970-01-01T00:00:22","window_end":"1970-01-01T00:00:40","clicks":2,"pages":2}
result visits key=u2 {"user_id":"u2","window_start":"1970-01-01T00:00:40","window_end":"1970-01-01T00:00:50","clicks":1,"pages":1}
