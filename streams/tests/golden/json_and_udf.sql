-- JSON extraction from a text column with json_get, and a UDF the caller registered
-- (`shout`, registered by the golden harness: upper case with a `!`).
== sql
CREATE TABLE events (name TEXT, payload TEXT, ts TIMESTAMP) WITH (topic = 'events');
INSERT INTO extracted
SELECT shout(name) AS key, json_get(payload, 'user.id') AS user_id, json_get(payload, 'tags') AS tags,
       json_get(payload, 'missing') AS missing
FROM events;
== input
0 {"name":"a","payload":"{\"user\":{\"id\":\"u7\"},\"tags\":[1,2]}","ts":1}
0 {"name":"b","payload":"not json","ts":2}
== expected
result extracted key=A! {"key":"A!","user_id":"u7","tags":"[1,2]"}
result extracted key=B! {"key":"B!"}
