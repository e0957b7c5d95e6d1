-- A buffered query (nested aggregate, Nexmark q7's shape) joined with a lookup table sees
-- the lookup rows that arrived before its window ran; a column referenced only inside a
-- subquery is decoded; a window whose rows make the query fail is reported on the
-- dead-letter topic and the job goes on.
== sql
CREATE TABLE categories (id BIGINT, label TEXT) WITH (topic = 'categories', lookup_key = 'id');
CREATE TABLE bids (auction BIGINT, category BIGINT, price BIGINT, flag BIGINT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts) WITH (topic = 'bids');
INSERT INTO top_bids
SELECT c.label, B.window_start, B.price, 100 / (B.price - 13) AS odd
FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) B
JOIN (SELECT max(price) AS m, window_start FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) GROUP BY window_start) M
  ON B.price = M.m AND B.window_start = M.window_start
JOIN categories c ON B.category = c.id;
INSERT INTO flagged SELECT auction AS key FROM bids WHERE auction IN (SELECT auction FROM bids WHERE flag = 1);
== input
0 {"auction":1,"category":7,"price":10,"flag":0,"ts":1000}
0 {"auction":2,"category":8,"price":12,"flag":1,"ts":2000}
categories/0 {"id":8,"label":"books"}
== input
0 {"auction":3,"category":8,"price":13,"flag":0,"ts":15000}
== input
0 {"auction":4,"category":8,"price":1,"flag":0,"ts":25000}
== expected
result flagged key=2 {"key":2}
result top_bids key=- {"label":"books","window_start":"1970-01-01T00:00:00","price":12,"odd":-100}
dlq %DLQ%golden key=- {"window_end_ms":20000,"window_start_ms":10000} (the query failed on this window: datafusion: Arrow error: Divide by zero error)
