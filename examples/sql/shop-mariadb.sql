-- A small MariaDB shop in an old shape, for examples/shop-to-postgres.toml:
--   mysql -h 127.0.0.1 -u root test < examples/sql/shop-mariadb.sql
-- (re-running it rebuilds the tables). Zero dates and a Latin-1 table included: they are what
-- real old shops hold.
SET SESSION sql_mode = '';
DROP TABLE IF EXISTS shop_order, shop_product, shop_customer;
CREATE TABLE shop_customer (
  id INT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  full_name VARCHAR(120) NOT NULL,
  email VARCHAR(190) NOT NULL,
  newsletter TINYINT(1) NOT NULL DEFAULT 0,
  signed_up DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00'
) DEFAULT CHARSET = latin1;
CREATE TABLE shop_product (
  sku VARCHAR(32) COLLATE utf8mb4_bin PRIMARY KEY,
  title VARCHAR(200) NOT NULL,
  price DECIMAL(10, 2) NOT NULL,
  attributes JSON
) DEFAULT CHARSET = utf8mb4;
CREATE TABLE shop_order (
  id BIGINT PRIMARY KEY,
  customer_id INT UNSIGNED NOT NULL,
  sku VARCHAR(32) NOT NULL,
  qty SMALLINT NOT NULL,
  status ENUM('cart', 'paid', 'shipped', 'returned') NOT NULL,
  placed DATE NOT NULL DEFAULT '0000-00-00'
) DEFAULT CHARSET = utf8mb4;
INSERT INTO shop_customer (full_name, email, newsletter, signed_up)
SELECT CONCAT(ELT(1 + seq % 5, 'Ana', 'José', 'Zoë', 'Nguyễn', 'Li'), ' ',
              ELT(1 + seq % 4, 'Smith', 'Müller', 'Ó Briain', 'Tran Van')),
       CONCAT('  Customer', seq, '@Example.COM '), seq % 2,
       IF(seq % 50 = 0, '0000-00-00 00:00:00', '2015-03-01 12:00:00' + INTERVAL seq HOUR)
FROM seq_1_to_2000;
INSERT INTO shop_product
SELECT CONCAT('SKU-', LPAD(seq, 5, '0')), CONCAT('Product ', seq), seq * 1.5 + 0.99,
       JSON_OBJECT('colour', ELT(1 + seq % 3, 'red', 'green', 'blue'),
                   'sizes', JSON_ARRAY('S', 'M', 'L'), 'extra', JSON_OBJECT())
FROM seq_1_to_300;
INSERT INTO shop_order
SELECT seq, 1 + seq % 2000, CONCAT('SKU-', LPAD(1 + seq % 300, 5, '0')), 1 + seq % 3,
       ELT(1 + seq % 4, 'cart', 'paid', 'shipped', 'returned'),
       IF(seq % 97 = 0, '0000-00-00', '2020-01-01' + INTERVAL (seq % 1500) DAY)
FROM seq_1_to_6000;
