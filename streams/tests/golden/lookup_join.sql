-- A lookup join: orders enriched with the latest row per customer id from another topic.
-- A newer customer row replaces the older one for later orders; an order without a match
-- is dropped by the inner join and kept (with nulls) by the LEFT JOIN.
== sql
CREATE TABLE customers (id TEXT, name TEXT, tier TEXT) WITH (topic = 'customers', lookup_key = 'id');
CREATE TABLE orders (id BIGINT, customer_id TEXT, amount DOUBLE, ts TIMESTAMP,
  WATERMARK FOR ts AS ts) WITH (topic = 'orders');
INSERT INTO enriched
SELECT o.id AS key, c.name, c.tier, o.amount FROM orders o JOIN customers c ON o.customer_id = c.id;
INSERT INTO tier_totals
SELECT coalesce(c.tier, 'unknown') AS tier, window_start, sum(o.amount) AS total
FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) o LEFT JOIN customers c ON o.customer_id = c.id
GROUP BY coalesce(c.tier, 'unknown'), window_start, window_end;
== input
customers/0 {"id":"c1","name":"Ada","tier":"gold"}
customers/0 {"id":"c2","name":"Bob","tier":"silver"}
0 {"id":1,"customer_id":"c1","amount":10.0,"ts":1000}
0 {"id":2,"customer_id":"c9","amount":5.0,"ts":2000}
== input
customers/0 {"id":"c2","name":"Bob","tier":"gold"}
customers/0 {"name":"no id"}
0 {"id":3,"customer_id":"c2","amount":7.0,"ts":3000}
0 {"id":4,"customer_id":"c1","amount":1.0,"ts":12000}
== expected
result enriched key=1 {"key":1,"name":"Ada","tier":"gold","amount":10.0}
dlq %DLQ%golden key=- {"name":"no id"} (the lookup key id is null)
result enriched key=4 {"key":4,"name":"Ada","tier":"gold","amount":1.0}
result enriched key=3 {"key":3,"name":"Bob","tier":"gold","amount":7.0}
result tier_totals key=- {"tier":"gold","window_start":"1970-01-01T00:00:00","total":17.0}
result tier_totals key=- {"tier":"unknown","window_start":"1970-01-01T00:00:00","total":5.0}
