-- Bad rows go to the job's dead-letter topic with the reason; the good ones are processed.
== sql
CREATE TABLE events (name TEXT, n BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'events');
INSERT INTO named
SELECT name AS key, n * 2 AS doubled FROM events;
== input
0 {"name":"ok","n":1,"ts":1000}
0 not json at all
0 {"name":"typed","n":"three","ts":1000}
0 {"name":"no time","n":4}
0 [1,2]
0 {"name":"far future","n":6,"ts":9223372036854775807}
0 {"name":"also ok","n":5,"ts":2000}
== expected
result named key=ok {"key":"ok","doubled":2}
result named key=also_ok {"key":"also ok","doubled":10}
dlq %DLQ%golden key=- not json at all (not a JSON object)
dlq %DLQ%golden key=- {"name":"typed","n":"three","ts":1000} (arrow: Json error: whilst decoding field 'n': failed to parse "three" as Int64)
dlq %DLQ%golden key=- [1,2] (not a JSON object)
dlq %DLQ%golden key=- {"name":"no time","n":4} (the event time column ts is null or outside years 1..=9999)
dlq %DLQ%golden key=- {"name":"far future","n":6,"ts":9223372036854775807} (the event time column ts is null or outside years 1..=9999)
