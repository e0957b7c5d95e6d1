-- An aggregate that needs its input sorted cannot be merged from pane states: refused at
-- planning, with the aggregate named.
== sql
CREATE TABLE orders (customer TEXT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts)
  WITH (topic = 'orders');
INSERT INTO firsts
SELECT customer, window_end, first_value(amount ORDER BY ts) AS first_amount
FROM TUMBLE(orders, ts, INTERVAL '10' SECOND)
GROUP BY customer, window_start, window_end;
== input
0 {"customer":"c1","amount":10.0,"ts":1000}
== expected
error cannot plan: INSERT INTO firsts: first_value(__weir_window_0.amount) ORDER BY [__weir_window_0.ts ASC NULLS LAST]: ORDER BY inside an aggregate is not supported
